"""``GET /v1/models`` as OpenAI clients expect it: the one model a port serves."""

from __future__ import annotations

import json
import time

MODELS_PATH = "/v1/models"
_CREATED = int(time.time())


def models_body(model_id: str) -> bytes:
    return json.dumps({"object": "list", "data": [{"id": model_id, "object": "model", "created": _CREATED,
                                                   "owned_by": "nemotron-stack"}]}).encode()

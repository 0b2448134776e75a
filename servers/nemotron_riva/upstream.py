"""Where the gateway's calls go (the ASR and TTS servers), and who may make them."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import grpc
from nemotron_common.access import Access


def http_base(ws_url: str) -> str:
    parts = urlsplit(ws_url)
    return f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"


class Upstream:
    def __init__(self, asr_url: str, tts_url: str, api_key: str | None) -> None:
        self.asr_url, self.tts_url = asr_url, tts_url
        self.api_key = api_key
        self.access = Access(api_key)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.tts_config: dict = {}
        self.asr_model = ""

    async def authorize(self, context: grpc.aio.ServicerContext) -> None:
        """With an API key, a call must carry the metadata ``authorization: Bearer KEY``."""
        sent = dict(context.invocation_metadata() or ()).get("authorization", "")
        if not self.access.authorized(sent):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "a valid API key is required: send the metadata authorization: Bearer <key>")

    def _get(self, url: str) -> tuple[int, bytes]:
        request = urllib.request.Request(url, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def wait_ready(self, timeout_s: float, progress) -> None:
        """Block until ASR and TTS answer /health 200, then read TTS's voices and sample rate."""
        deadline = time.monotonic() + timeout_s
        for name, url in (("ASR", self.asr_url), ("TTS", self.tts_url)):
            base = http_base(url)
            while True:
                try:
                    if self._get(base + "/health")[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} at {base} was not ready within {timeout_s:g} s")
                progress(f"waiting for {name} at {base}", timeout_s)
                time.sleep(1.0)
        status, body = self._get(http_base(self.asr_url) + "/v1/models")
        self.asr_model = json.loads(body)["data"][0]["id"] if status == 200 else "asr"
        status, body = self._get(http_base(self.tts_url) + "/v1/audio/config")
        if status != 200:
            raise RuntimeError(f"TTS /v1/audio/config answered {status}: {body[:200]!r}")
        self.tts_config = json.loads(body)

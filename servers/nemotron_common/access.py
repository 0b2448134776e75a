"""Who may use a port: an optional API key (``Authorization: Bearer``) and a browser Origin allow-list.

Health paths stay open (systemd, load balancers and ``nemotron-install status`` probe them); every
other HTTP request and WebSocket handshake is checked here before it reaches a session.

The key comes from a file, never from the environment or the command line (both show up in
``systemctl show`` and ``ps``): the ``api_key_file`` setting, or else the systemd credential
``api-key`` when the unit loads one (``LoadCredential=api-key:/etc/nemotron/api-key``, which
``nemotron-install --api-key`` writes for every service).

Browsers send ``Origin`` on every WebSocket handshake and cross-site request, and any web page open
on the box could otherwise drive the services; clients that are not browsers send none. So a request
with an Origin is refused unless ``allowed_origins`` names it (``*``: any).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError

CREDENTIAL = "api-key"


def api_key_path(path: str) -> Path | None:
    """``path``, or the unit's ``api-key`` credential when it loads one; None when neither is given."""
    if path:
        return Path(path)
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory and (Path(directory) / CREDENTIAL).is_file():
        return Path(directory) / CREDENTIAL
    return None


def read_api_key(path: str) -> str | None:
    """The key in :func:`api_key_path`'s file; None when access is open."""
    where = api_key_path(path)
    if where is None:
        return None
    try:
        key = where.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"api_key_file: cannot read {where}: {exc.strerror}") from None
    if not key or any(c.isspace() for c in key):
        raise ConfigError(f"api_key_file: {where} must hold one key, without spaces")
    return key


def parse_origins(text: str) -> frozenset[str]:
    return frozenset(origin.strip().rstrip("/") for origin in text.split(",") if origin.strip())


@dataclass(frozen=True)
class Access:
    api_key: str | None = None
    origins: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, api_key_file: str, allowed_origins: str) -> Access:
        return cls(read_api_key(api_key_file), parse_origins(allowed_origins))

    def describe(self) -> str:
        key = "API key required" if self.api_key else "no API key"
        origins = ", ".join(sorted(self.origins)) or "none (non-browser clients only)"
        return f"{key}; browser origins allowed: {origins}"

    def allows_origin(self, origin: str) -> bool:
        return "*" in self.origins or origin.rstrip("/") in self.origins

    def authorized(self, authorization: str) -> bool:
        """Whether an ``Authorization`` value (``Bearer KEY``) passes: always, without a key."""
        if self.api_key is None:
            return True
        scheme, _, token = authorization.partition(" ")
        key = self.api_key.encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key)

    def refusal(self, headers: Mapping[str, str]) -> tuple[int, str] | None:
        """(HTTP status, message) when this request may not go on; None when it may."""
        origin = headers.get("Origin")
        if origin is not None and not self.allows_origin(origin):
            return 403, f"origin {origin} is not allowed (the service's allowed_origins setting)"
        if not self.authorized(headers.get("Authorization", "")):
            return 401, "a valid API key is required: send the header Authorization: Bearer <key>"
        return None

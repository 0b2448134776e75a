"""The HTTP layer every model server shares: one aiohttp application per port.

Each server's transport subclasses :class:`HttpTransport` and adds its own routes in :meth:`routes`;
this layer answers what every port answers the same way: health (open to all), ``/metrics``,
``/v1/models``, the API key and Origin checks before any handler or WebSocket handshake, CORS for
allowed browser origins, and errors in OpenAI's shape (``{"error": {"message", "code"}}``).
"""

from __future__ import annotations

from aiohttp import web
from loguru import logger

from .access import Access
from .health import HEALTH_PATHS, Health
from .metrics import METRICS_PATH
from .models_list import MODELS_PATH, models_body


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "code": status}}, status=status, headers=headers)


def cors_headers(origin: str) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Expose-Headers": "X-Sample-Rate, X-Channels, X-Encoding, X-Duration-Ms"}


class HttpTransport:
    """One port's aiohttp server. ``metrics`` is the server's own: its ``metrics`` registry is
    served at ``/metrics`` and its ``errors`` counter (label ``kind``) counts refusals."""

    def __init__(self, health: Health, host: str, port: int, access: Access | None, model_id: str,
                 metrics, *, max_body_bytes: int, idle_timeout_s: float = 10.0,
                 reuse_port: bool = False) -> None:
        """``reuse_port``: the port is shared with other processes of the service (SO_REUSEPORT),
        among which the kernel spreads new connections."""
        self.health = health
        self.host, self.port = host, port
        self.access = access or Access()
        self.model_id = model_id
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.idle_timeout_s = idle_timeout_s
        self.reuse_port = reuse_port
        self.closing = False
        self._runner: web.AppRunner | None = None

    def routes(self, router: web.UrlDispatcher) -> None:
        """Add the server's own endpoints."""

    def describe(self) -> str:
        """What the start-up log line says is where."""
        return f"http://{self.host}:{self.port}/"

    async def start(self) -> None:
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[self._guard])
        app.on_response_prepare.append(self._add_cors)
        for path in HEALTH_PATHS:
            app.router.add_get(path, self._health)
        app.router.add_get(METRICS_PATH, self._metrics)
        app.router.add_get(MODELS_PATH, self._models)
        self.routes(app.router)
        # handler_cancellation: a client that disconnects cancels its handler, and so its work.
        # keepalive_timeout: an idle keep-alive connection is closed after it.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0,
                                     handler_cancellation=True, keepalive_timeout=self.idle_timeout_s)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_port=self.reuse_port or None).start()
        self.port = self._runner.addresses[0][1]
        logger.info(f"listening on {self.describe()} (health at /health)")

    async def cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def count_error(self, kind: str) -> None:
        self.metrics.errors.labels(kind).inc()

    def not_ready(self) -> web.Response | None:
        """A 503 while the model loads or the server stops; None when requests may go on."""
        if self.closing or not self.health.ready:
            return error_response(503, f"not ready: {self.health.state.value}")
        return None

    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:
        """Access control before any handler; CORS headers only for origins the settings allow."""
        if request.path in HEALTH_PATHS:
            return await handler(request)
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and origin and self.access.allows_origin(origin):
            return web.Response(status=204, headers=cors_headers(origin))  # a browser's preflight
        if (refusal := self.access.refusal(request.headers)) is not None:
            self.count_error("unauthorized" if refusal[0] == 401 else "forbidden_origin")
            return error_response(*refusal)
        try:
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            self.count_error("bad_request")
            return error_response(413, f"the body is over this port's limit of {self.max_body_bytes} bytes")
        except web.HTTPNotFound:
            return error_response(404, f"not found: {request.path} (the endpoints are in docs/protocol.md)")
        except web.HTTPMethodNotAllowed as exc:
            return error_response(405, f"{request.method} is not allowed on {request.path}; use "
                                  f"{', '.join(sorted(exc.allowed_methods))}",
                                  headers={"Allow": ", ".join(sorted(exc.allowed_methods))})
        if response.status == 400:
            self.count_error("bad_request")
        return response

    async def _add_cors(self, request: web.Request, response: web.StreamResponse) -> None:
        """Before any response's headers go out, streamed ones too: CORS for an allowed origin."""
        origin = request.headers.get("Origin")
        if origin and self.access.allows_origin(origin) and request.path not in HEALTH_PATHS:
            response.headers.update(cors_headers(origin))

    async def _health(self, request: web.Request) -> web.Response:
        status, body = self.health.answer(request.path)
        return web.json_response(body, status=status)

    async def _metrics(self, _request: web.Request) -> web.Response:
        body, content_type = self.metrics.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _models(self, _request: web.Request) -> web.Response:
        return web.Response(body=models_body(self.model_id), content_type="application/json")


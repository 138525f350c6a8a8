"""Bearer API keys, checked before anything else reads the request.

A pure ASGI middleware rather than a FastAPI dependency: FastAPI parses the JSON body before it runs
dependencies, so with a dependency an unauthenticated client would get 400s describing its body
instead of a 401. (And unlike `BaseHTTPMiddleware`, a pure ASGI middleware passes `receive` through
untouched, which `with_cancellation` relies on to see disconnects.)
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from services.common.errors import error_response

PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics"})


class ApiKeyMiddleware:
    """Answer 401 (OpenAI-style) to requests without a valid `Authorization: Bearer <key>`.

    No keys configured means no authentication. Public paths (liveness, readiness, metrics) are open.
    """

    def __init__(self, app: ASGIApp, keys: Iterable[str], public: Iterable[str] = PUBLIC_PATHS):
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.public = frozenset(public)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            response = error_response(401, "missing API key: send 'Authorization: Bearer <key>'", None,
                                      "missing_api_key", {"WWW-Authenticate": "Bearer"})
        elif not self.valid(token.strip()):
            response = error_response(401, "invalid API key", None, "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    def valid(self, token: str) -> bool:
        """Constant-time comparison against every key (no early exit, so timing reveals nothing)."""
        candidate = token.encode("utf-8", "surrogateescape")
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(candidate, key)
        return matched

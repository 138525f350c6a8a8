"""Bearer API keys, checked before anything else reads the request.

A pure ASGI middleware rather than a FastAPI dependency: FastAPI parses the JSON body before it runs
dependencies, so with a dependency an unauthenticated client would get 400s describing its body
instead of a 401. (And unlike `BaseHTTPMiddleware`, a pure ASGI middleware passes `receive` through
untouched, which `with_cancellation` relies on to see disconnects.)
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from services.common.errors import error_response

PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics"})


class ApiKeyMiddleware:
    """Answer 401 (OpenAI-style) to requests without a valid `Authorization: Bearer <key>`.

    No keys configured means no authentication. Public paths (liveness, readiness, metrics) are open.
    `scopes` maps a path prefix to the keys accepted under it instead of `keys` (an empty list: `keys`): the
    gateway's training-job routes take their own keys, so a key handed out for completions cannot start a job on
    the cluster's accelerators. A key valid elsewhere but not for the path gets 403, naming the path.
    """

    def __init__(self, app: ASGIApp, keys: Iterable[str], public: Iterable[str] = PUBLIC_PATHS,
                 scopes: Mapping[str, Iterable[str]] | None = None):
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.public = frozenset(public)
        self.scopes = {prefix.rstrip("/"): encoded for prefix, keys_ in (scopes or {}).items()
                       if (encoded := [k.encode() for k in keys_])}
        self.every_key = [*self.keys, *(k for keys_ in self.scopes.values() for k in keys_)]

    def keys_for(self, path: str) -> tuple[str | None, list[bytes]]:
        """(the scope's prefix or None, the keys accepted on `path`)."""
        for prefix, keys in self.scopes.items():
            if path == prefix or path.startswith(prefix + "/"):
                return prefix, keys
        return None, self.keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        prefix, keys = self.keys_for(scope.get("path", ""))
        if scope["type"] != "http" or not keys or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            response = error_response(401, "missing API key: send 'Authorization: Bearer <key>'", None,
                                      "missing_api_key", {"WWW-Authenticate": "Bearer"})
        elif valid(token.strip(), keys):
            await self.app(scope, receive, send)
            return
        elif valid(token.strip(), self.every_key):
            where = f"{prefix}/*" if prefix is not None else "this path"
            response = error_response(403, f"this API key is not accepted on {where} ({scope['path']})", None,
                                      "key_not_permitted")
        else:
            response = error_response(401, "invalid API key", None, "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def valid(token: str, keys: Iterable[bytes]) -> bool:
    """Constant-time comparison against every key (no early exit, so timing reveals nothing)."""
    candidate = token.encode("utf-8", "surrogateescape")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key)
    return matched

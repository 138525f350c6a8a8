"""OpenAI-style error bodies and the exception handlers that make every failure one.

Every error leaves the gateway (and the trainer API) as `{"error": {"message", "type", "param", "code"}}`, the shape the
`openai` client parses into its exception classes. Bad input is always a 4xx naming the field:
validation failures are 400 (as OpenAI answers; the client raises `BadRequestError`), not FastAPI's 422.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from specserve.errors import ContextLengthError, InvalidRequestError

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
          429: "rate_limit_error", 503: "service_unavailable_error"}


class APIError(Exception):
    """An error a service answers on purpose; `param` names the offending request field."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    @classmethod
    def bad_request(cls, param: str | None, message: str, code: str | None = "invalid_value") -> APIError:
        """A 400 naming `param`; the message is prefixed with it so a human sees it too."""
        return cls(400, f"{param}: {message}" if param else message, param, code)

    @classmethod
    def from_engine(cls, exc: InvalidRequestError, rename: dict[str, str] | None = None) -> APIError:
        """Map the engine's typed validation errors (which name their field) to a 400."""
        param = (rename or {}).get(exc.field, exc.field)
        code = "context_length_exceeded" if isinstance(exc, ContextLengthError) else "invalid_value"
        message = str(exc).removeprefix(f"{exc.field}: ")
        return cls.bad_request(param, message, code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """The OpenAI error object."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSONResponse carrying `error_body`."""
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def _validation_param(loc: tuple) -> tuple[str | None, str]:
    """("body", "messages", 0, "content") -> ("messages", "messages.0.content"); ("query", "limit") -> ("limit",
    "limit"); the body itself -> None."""
    parts = [str(p) for p in (loc[1:] if loc and loc[0] in ("body", "query", "path") else loc)]
    return (parts[0] if parts else None), ".".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Register handlers for APIError, validation errors, HTTP errors and anything unexpected."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(InvalidRequestError)
    async def _engine_validation(request: Request, exc: InvalidRequestError) -> JSONResponse:
        err = APIError.from_engine(exc)
        return error_response(err.status, err.message, err.param, err.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors() or [{"loc": (), "msg": "invalid request", "type": "invalid"}]
        first = errors[0]
        if first.get("type") == "json_invalid":
            detail = (first.get("ctx") or {}).get("error", "")
            return error_response(400, f"malformed JSON body: {detail}".rstrip(": "), None, "json_invalid")
        param, path = _validation_param(tuple(first.get("loc", ())))
        if param is None:
            return error_response(400, "the body must be a JSON object sent with Content-Type: application/json",
                                  None, first.get("type"))
        # A union (prompt, content) fails once per member; the deepest error is the member the client meant.
        same_field = [e for e in errors if _validation_param(tuple(e.get("loc", ())))[0] == param]
        chosen = max(same_field, key=lambda e: len(e.get("loc", ())))
        _, path = _validation_param(tuple(chosen.get("loc", ())))
        message = "unknown or unsupported field" if chosen.get("type") == "extra_forbidden" else chosen.get("msg")
        return error_response(400, f"{path}: {message}", param, chosen.get("type"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(exc.status_code, message, None, None, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: log it with the traceback and answer without internals.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error; it has been logged", None, "internal_error")

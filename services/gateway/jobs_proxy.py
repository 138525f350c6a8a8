"""The gateway's training-job proxy: `/v1/jobs` and `/v1/jobs/...` forwarded to the trainer API.

Clients that already talk to the gateway submit and follow training jobs there, with the gateway's keys; the
gateway calls the trainer (`trainer_url`) with its own key (`trainer_client_key`). Answers pass through as the
trainer gives them (status, OpenAI-style error bodies, `Retry-After`). Without `trainer_url` the routes answer
404 saying how to enable them. The routes are left out of the gateway's OpenAPI document: the trainer serves
its own (`/docs` on the trainer).
"""

from __future__ import annotations

import httpx
from fastapi import APIRouter, Request, Response

from services.common.errors import APIError
from services.gateway.settings import GatewaySettings

PASSED_HEADERS = ("content-type", "retry-after")
MAX_BODY_BYTES = 1 << 20  # a job is a config or a few flags


def jobs_router(settings: GatewaySettings) -> APIRouter:
    router = APIRouter()

    @router.api_route("/v1/jobs", methods=["GET", "POST"], include_in_schema=False)
    @router.api_route("/v1/jobs/{rest:path}", methods=["GET", "POST"], include_in_schema=False)
    async def proxy(request: Request, rest: str = "") -> Response:
        if not settings.trainer_url:
            raise APIError(404, "training jobs are not served by this gateway; set trainer_url "
                                "(SPECSERVE_TRAINER_URL) to the trainer API's address", None, "jobs_not_enabled")
        if ".." in rest.split("/"):
            raise APIError(404, f"no such path: {request.url.path}", None, "not_found")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise APIError(413, f"the body exceeds {MAX_BODY_BYTES} bytes", None, "body_too_large")
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        if settings.trainer_client_key:
            headers["authorization"] = f"Bearer {settings.trainer_client_key}"
        path = "/v1/jobs" + (f"/{rest}" if rest else "")
        try:  # a client per call (jobs are rare); trust_env=False: the environment's HTTP(S)_PROXY must not apply
            async with httpx.AsyncClient(timeout=settings.trainer_timeout_s, trust_env=False) as client:
                answer = await client.request(request.method, settings.trainer_url.rstrip("/") + path,
                                              params=request.query_params, content=body, headers=headers)
        except httpx.TimeoutException:
            raise APIError(504, f"the trainer service did not answer within {settings.trainer_timeout_s} s", None,
                           "trainer_timeout") from None
        except httpx.TransportError as exc:
            raise APIError(503, f"the trainer service is unreachable ({type(exc).__name__})", None,
                           "trainer_unavailable", headers={"Retry-After": str(settings.retry_after_s)}) from None
        if answer.status_code == 401:  # the client passed the gateway's check: the gateway's own key is wrong
            raise APIError(502, "the trainer refused the gateway's key (trainer_client_key)", None, "trainer_auth")
        return Response(answer.content, status_code=answer.status_code,
                        headers={k: v for k, v in answer.headers.items() if k.lower() in PASSED_HEADERS})

    return router

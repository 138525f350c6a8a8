"""Bad input: every case is a 4xx with an OpenAI-style error body naming the field; nothing reaches the engine."""

from __future__ import annotations

import httpx
import openai
import pytest
from gateway_testkit import API_KEY, MODEL

AUTH = {"Authorization": f"Bearer {API_KEY}"}
C = {"model": MODEL, "prompt": "hello", "max_tokens": 4}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}

CASES = [  # (path, body, status, param, code or None)
    ("/v1/completions", {**C, "max_tokens": "ten"}, 400, "max_tokens", None),
    ("/v1/completions", {**C, "temperature": -0.5}, 400, "temperature", None),
    ("/v1/completions", {**C, "temperature": "hot"}, 400, "temperature", None),
    ("/v1/completions", {**C, "top_p": 0}, 400, "top_p", None),
    ("/v1/completions", {**C, "top_p": 1.5}, 400, "top_p", None),
    ("/v1/completions", {**C, "top_k": -2}, 400, "top_k", None),
    ("/v1/completions", {**C, "model": "gpt-4"}, 404, "model", "model_not_found"),
    ("/v1/completions", {**C, "max_tokens": 100_000}, 400, "max_tokens", "context_length_exceeded"),
    ("/v1/completions", {**C, "max_tokens": 0}, 400, "max_tokens", None),
    ("/v1/completions", {**C, "n": 5}, 400, "n", None),
    ("/v1/completions", {**C, "n": 0}, 400, "n", None),
    ("/v1/completions", {**C, "prompt": ["a", "b", "c"], "n": 2}, 400, "prompt", None),
    ("/v1/completions", {**C, "prompt": "hello " * 2000}, 400, "prompt", "context_length_exceeded"),
    ("/v1/completions", {**C, "prompt": [5, 999_999]}, 400, "prompt", None),
    ("/v1/completions", {**C, "prompt": [-1]}, 400, "prompt", None),
    ("/v1/completions", {**C, "prompt": ""}, 400, "prompt", None),
    ("/v1/completions", {**C, "prompt": []}, 400, "prompt", None),
    ("/v1/completions", {**C, "prompt": 42}, 400, "prompt", None),
    ("/v1/completions", {"model": MODEL}, 400, "prompt", "missing"),
    ("/v1/completions", {**C, "foo": 1}, 400, "foo", "extra_forbidden"),
    ("/v1/completions", {**C, "frequency_penalty": 0.5}, 400, "frequency_penalty", "unsupported"),
    ("/v1/completions", {**C, "logprobs": 2}, 400, "logprobs", "unsupported"),
    ("/v1/completions", {**C, "echo": True}, 400, "echo", "unsupported"),
    ("/v1/completions", {**C, "best_of": 3}, 400, "best_of", "unsupported"),
    ("/v1/completions", {**C, "stop": ""}, 400, "stop", None),
    ("/v1/completions", {**C, "stop": ["x"] * 20}, 400, "stop", None),
    ("/v1/completions", {**C, "stream_options": {"include_usage": True}}, 400, "stream_options", None),
    ("/v1/completions", {**C, "stream": True, "stream_options": {"bogus": 1}}, 400, "stream_options", None),
    ("/v1/completions", {**C, "seed": 2**70}, 400, "seed", None),
    ("/v1/completions", {**C, "stream": "maybe"}, 400, "stream", None),
    ("/v1/chat/completions", {**CHAT, "messages": []}, 400, "messages", None),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages", None),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, 400, "messages", None),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "hi " * 2000}]}, 400, "messages",
     "context_length_exceeded"),
    ("/v1/chat/completions", {**CHAT, "max_completion_tokens": 0}, 400, "max_completion_tokens", None),
    ("/v1/chat/completions", {**CHAT, "max_completion_tokens": 100_000}, 400, "max_completion_tokens",
     "context_length_exceeded"),
    ("/v1/chat/completions", {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools",
     "unsupported"),
    ("/v1/chat/completions", {**CHAT, "response_format": {"type": "json_object"}}, 400, "response_format",
     "unsupported"),
    ("/v1/chat/completions", {**CHAT, "model": "nope"}, 404, "model", "model_not_found"),
    ("/v1/chat/completions", {**CHAT, "n": 9}, 400, "n", None),
    ("/v1/chat/completions", {**CHAT, "logprobs": True}, 400, "logprobs", "unsupported"),
]


def _check(r: httpx.Response, status: int, param: str | None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    if code is not None:
        assert error["code"] == code, error
    if param:
        assert param in error["message"]
    return error


@pytest.mark.parametrize(("path", "body", "status", "param", "code"), CASES,
                         ids=[f"{p.rsplit('/', 1)[-1]}-{param}-{i}" for i, (p, _, _, param, _) in enumerate(CASES)])
def test_bad_field(gateway, path, body, status, param, code):
    _check(httpx.post(gateway.url + path, json=body, headers=AUTH), status, param, code)


@pytest.mark.parametrize("raw", [b'{"model": "tiny", "prompt": ', b"\xff\xfe", b"[1, 2]", b'"text"', b"",
                                 b'{"model": "tiny", "prompt": "x", "temperature": NaN}'])
def test_malformed_body(gateway, raw):
    r = httpx.post(gateway.url + "/v1/completions", content=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_unknown_route_and_method(gateway):
    _check(httpx.get(gateway.url + "/v1/nothing", headers=AUTH), 404, None)
    _check(httpx.get(gateway.url + "/v1/completions", headers=AUTH), 405, None)


def test_openai_client_raises_bad_request_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="hi", temperature=-1)
    assert info.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=99)
    assert info.value.body["param"] == "n"


def test_nothing_reached_the_engine(gateway):
    before = _engine_requests(gateway)
    for path, body, *_ in CASES:
        httpx.post(gateway.url + path, json=body, headers=AUTH)
    assert _engine_requests(gateway) == before


def _engine_requests(gateway) -> float:
    text = httpx.get(gateway.url + "/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("specserve:request_success_total"))

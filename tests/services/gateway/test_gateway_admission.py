"""Bounded admission (429, nothing lost or duplicated), disconnects freeing sessions, draining, engine failures.

The engine here verifies slowly (10 ms per round), so requests overlap deterministically.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import httpx
import openai
import pytest
from gateway_testkit import API_KEY, MODEL, LiveServer, gateway_settings

from services.gateway.app import create_app
from specserve.drafters.ngram import NgramDrafter
from specserve.engine.engine import SpecEngine
from specserve.engine.verifier import LocalVerifier
from specserve.target.model import CausalLM

AUTH = {"Authorization": f"Bearer {API_KEY}"}
LONG = {"model": MODEL, "prompt": "hello world", "max_tokens": 400, "temperature": 0, "ignore_eos": True}


class SlowVerifier:
    """A LocalVerifier that sleeps before every verify, and fails on demand."""

    def __init__(self, inner: LocalVerifier, delay_s: float):
        self.inner, self.delay_s, self.fail = inner, delay_s, False
        self.vocab_size, self.max_context, self.eos_token_ids = inner.vocab_size, inner.max_context, inner.eos_token_ids

    def open(self, batch):
        return self.inner.open(batch)

    def verify(self, batch):
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("injected verifier failure")
        return self.inner.verify(batch)

    def close(self, session):
        self.inner.close(session)

    def load(self):
        return self.inner.load()


def _slow_server(target_dir, **overrides):
    target = CausalLM.from_pretrained(str(target_dir))
    verifier = SlowVerifier(LocalVerifier(target), delay_s=0.01)
    engine = SpecEngine(verifier, NgramDrafter(max_block=4), tokenizer=target.tokenizer, max_batch=8)
    settings = gateway_settings(target_dir, max_waiting=2, n_limit=2, **overrides)
    return LiveServer(create_app(settings, engine=engine)), target, verifier


@pytest.fixture(scope="module")
def slow(tiny_target_dir):
    server, target, verifier = _slow_server(tiny_target_dir)
    with server:
        yield server, target, verifier


def _counter(url: str, name: str, **labels) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(f"specserve:{name}") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.split()[-1])
    return total


def _wait_idle(server, target, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while server.state.engine.has_unfinished() or len(target.cache) or server.state.admission.in_flight:
        assert time.monotonic() < deadline, "sessions were not freed"
        time.sleep(0.02)


def test_overload_gets_429_and_loses_nothing(slow):
    server, target, _ = slow
    done_before = _counter(server.url, "request_success_total")
    rejected_before = _counter(server.url, "request_rejected_total")
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)

    async def one():
        try:
            return await client.completions.create(model=MODEL, prompt="hello world", max_tokens=40, temperature=0,
                                                   extra_body={"ignore_eos": True})
        except openai.RateLimitError as exc:
            assert exc.response.headers["retry-after"] == "1"
            assert exc.body["code"] == "queue_full"
            return exc

    async def fire():
        try:
            return await asyncio.gather(*(one() for _ in range(6)))
        finally:
            await client.close()

    results = asyncio.run(fire())
    ok = [r for r in results if not isinstance(r, Exception)]
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(ok) + len(limited) == 6 and len(ok) >= 2 and limited
    assert all(r.usage.completion_tokens == 40 and r.choices[0].finish_reason == "length" for r in ok)
    assert len({r.choices[0].text for r in ok}) == 1  # greedy: every served request got the full answer
    _wait_idle(server, target)
    assert _counter(server.url, "request_success_total") - done_before == len(ok)  # none ran twice, none lost
    assert _counter(server.url, "request_rejected_total") - rejected_before == len(limited)


def test_streaming_disconnect_aborts_and_frees_sessions(slow):
    server, target, _ = slow
    aborted = _counter(server.url, "request_success_total", finished_reason="abort")
    with httpx.stream("POST", server.url + "/v1/completions", json={**LONG, "stream": True}, headers=AUTH) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        while not next(lines).startswith("data: {"):
            pass
        assert len(target.cache) == 1  # the request is running
    _wait_idle(server, target)
    assert _counter(server.url, "request_success_total", finished_reason="abort") == aborted + 1


def test_non_streaming_disconnect_aborts_and_frees_sessions(slow):
    server, target, _ = slow
    aborted = _counter(server.url, "request_success_total", finished_reason="abort")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=LONG, headers=AUTH, timeout=0.3)
    _wait_idle(server, target)
    assert _counter(server.url, "request_success_total", finished_reason="abort") == aborted + 1


def test_engine_failure_is_503_not_500(slow):
    server, target, verifier = slow
    verifier.fail = True
    try:
        r = httpx.post(server.url + "/v1/completions", json={**LONG, "max_tokens": 8}, headers=AUTH)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_error" and r.headers["retry-after"]
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
        with pytest.raises(openai.APIError, match="engine failed"):
            for _ in client.completions.create(model=MODEL, prompt="hi", max_tokens=8, stream=True):
                pass
    finally:
        verifier.fail = False
    _wait_idle(server, target)
    assert httpx.post(server.url + "/v1/completions", json={**LONG, "max_tokens": 4}, headers=AUTH).status_code == 200


def test_drain_finishes_in_flight_and_refuses_new(tiny_target_dir):
    server, target, _ = _slow_server(tiny_target_dir)
    with server:
        chunks: list[str] = []

        def read_stream():
            body = {**LONG, "max_tokens": 60, "stream": True}
            with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=AUTH) as r:
                chunks.extend(r.iter_lines())

        reader = threading.Thread(target=read_stream)
        reader.start()
        while not server.state.engine.running:
            time.sleep(0.01)
        server.state.draining = True
        assert httpx.get(server.url + "/ready").status_code == 503
        refused = httpx.post(server.url + "/v1/completions", json=LONG, headers=AUTH)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
        server.server.handle_exit(signal.SIGTERM, None)  # what SIGTERM does: stop accepting, let in-flight finish
        reader.join(15)
        assert chunks and chunks[-2] == "data: [DONE]"

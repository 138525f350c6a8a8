"""Schemathesis fuzzing shared by the HTTP services' tests: derandomized cases, zero 5xx, OpenAI-style errors."""

from __future__ import annotations

import os
from collections.abc import Callable

# examples per generation mode; SPECSERVE_FUZZ_EXAMPLES=2000 for a long run
EXAMPLES = int(os.environ.get("SPECSERVE_FUZZ_EXAMPLES", "60"))
MODES = ("negative", "positive")


def fuzz_no_server_errors(openapi: dict, mode: str, call: Callable) -> dict[int, int]:
    """Send EXAMPLES cases of `mode` generated from the `openapi` document through `call(case) -> response`;
    fail on any 5xx or on an error without an OpenAI-style body. Returns how many answers had each status."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    strategy = schemathesis.openapi.from_dict(openapi).as_strategy(generation_mode=schemathesis.GenerationMode(mode))
    seen: dict[int, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case):
        response = call(case)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, f"{case.method} {case.path} {case.body!r} -> {response.text}"
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    check()
    assert sum(seen.values()) >= EXAMPLES // 2, seen
    return seen

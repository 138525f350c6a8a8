"""Fixtures: a running gateway (embedded engine on the tiny target) and the real `openai` client for it."""

from __future__ import annotations

import pytest
from gateway_testkit import API_KEY, LiveServer, gateway_settings

from services.gateway.app import create_app
from services.gateway.embedded import build_embedded_engine


@pytest.fixture(scope="module")
def gateway(tiny_target_dir):
    """A running gateway (embedded engine on the tiny target) and its settings."""
    settings = gateway_settings(tiny_target_dir)
    engine = build_embedded_engine(settings)
    with LiveServer(create_app(settings, engine=engine)) as server:
        yield server


@pytest.fixture(scope="module")
def client(gateway):
    """The real `openai` client pointed at the gateway (no retries, so every status is seen)."""
    import openai

    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0, timeout=30)

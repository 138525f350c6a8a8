"""Torch thread counts of the services: explicit, or every usable core but the ones reserved."""

from __future__ import annotations

import os

import pydantic
import pytest
import torch

from services.common.threads import set_torch_threads, usable_cores
from services.drafter.settings import DrafterSettings
from services.gateway.settings import GatewaySettings
from services.verifier.settings import VerifierSettings


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_leaves_the_reserved_cores_and_at_least_one_thread(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 5})  # 4 usable cores of 6
    assert usable_cores() == 4
    assert set_torch_threads(None, reserve=1) == 3 == torch.get_num_threads()
    assert set_torch_threads(None, reserve=9) == 1 == torch.get_num_threads()
    assert set_torch_threads(None) == 4 == torch.get_num_threads()


def test_omp_num_threads_is_kept_when_nothing_is_requested(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)  # what torch made of the variable at start-up
    assert set_torch_threads(None, reserve=1) == 1 == torch.get_num_threads()
    assert set_torch_threads(2, reserve=1) == 2 == torch.get_num_threads()  # an explicit count still wins


def test_explicit_count_wins():
    assert set_torch_threads(3, reserve=1) == 3 == torch.get_num_threads()


@pytest.mark.parametrize("settings", [GatewaySettings, VerifierSettings, DrafterSettings])
def test_settings_refuse_a_non_positive_count(settings):
    with pytest.raises(pydantic.ValidationError, match="threads"):
        settings(threads=0)
    assert settings(threads=2).threads == 2
    assert settings().threads is None


@pytest.mark.parametrize("command", ["serve", "serve-verifier", "serve-drafter"])
def test_threads_flag_reaches_the_settings(command, monkeypatch):
    """The CLI hands --threads to the service's settings object (serve() itself is not started)."""
    import specserve.cli as cli

    captured = {}
    modules = {"serve": ("services.gateway.main", "serve"), "serve-verifier": ("services.verifier.main", "serve"),
               "serve-drafter": ("services.drafter.main", "serve")}
    module = __import__(modules[command][0], fromlist=["serve"])

    async def fake_serve(settings, *args):
        captured["settings"] = settings

    monkeypatch.setattr(module, "serve", fake_serve)
    assert cli.main([command, "--threads", "3"]) == 0
    assert captured["settings"].threads == 3

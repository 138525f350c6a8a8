"""Torch thread counts of the services: explicit, or every usable core but the ones reserved."""

from __future__ import annotations

import pydantic
import pytest
import torch

from services.common.threads import set_torch_threads, usable_cores
from services.gateway.settings import GatewaySettings
from services.verifier.settings import VerifierSettings


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_leaves_the_reserved_cores_and_at_least_one_thread():
    cores = usable_cores()
    assert set_torch_threads(None, reserve=1) == max(1, cores - 1) == torch.get_num_threads()
    assert set_torch_threads(None, reserve=cores + 5) == 1 == torch.get_num_threads()
    assert set_torch_threads(None) == cores == torch.get_num_threads()


def test_explicit_count_wins():
    assert set_torch_threads(3, reserve=1) == 3 == torch.get_num_threads()


@pytest.mark.parametrize("settings", [GatewaySettings, VerifierSettings])
def test_settings_refuse_a_non_positive_count(settings):
    with pytest.raises(pydantic.ValidationError, match="threads"):
        settings(threads=0)
    assert settings(threads=2).threads == 2
    assert settings().threads is None

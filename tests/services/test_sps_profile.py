"""SPS(B) profiling of the target (specserve/target/profile.py), which the verifier service runs at start-up."""

import pytest

from specserve.target.model import CausalLM
from specserve.target.profile import monotone_times, profile_plain, profile_sps


def test_profile_covers_the_sizes_is_non_increasing_and_leaves_the_cache_as_it_was(model):
    target = CausalLM(model)
    target.open("user")
    target.forward(["user"], [[1, 2, 3]])
    table = profile_sps(target, sizes=(8, 1, 3), context=16, tokens_per_session=2, repeats=1, taps=(1,))
    assert sorted(table) == [1, 3, 8]
    assert all(v > 0 for v in table.values())
    assert table[1] >= table[3] >= table[8]
    assert target.cache.sessions() == ["user"] and target.length("user") == 3


def test_bad_sizes_are_refused(model):
    with pytest.raises(ValueError, match="sizes"):
        profile_sps(CausalLM(model), sizes=(0, 4))
    with pytest.raises(ValueError, match="max_sessions"):
        profile_plain(CausalLM(model), 0)


def test_plain_rounds_are_profiled_as_one_token_in_each_of_b_sessions(model):
    """A plain round appends one token to each of R sessions; a verify's table lays B tokens out in sessions of
    several. The plain table times the plain layout, for B = 1, 2, 4, ... up to the most sessions."""
    target = CausalLM(model)
    layouts = []
    forward = target.forward

    def spy(sessions, tokens, **kwargs):
        layouts.append(sorted({len(t) for t in tokens}))
        return forward(sessions, tokens, **kwargs)

    target.forward = spy
    table = profile_plain(target, 5, context=16, repeats=1, taps=(1,))
    assert sorted(table) == [1, 2, 4, 5]
    assert table[1] >= table[2] >= table[4] >= table[5] > 0
    assert layouts[0] == [16], "the sessions' context is prefilled first"
    assert all(layout == [1] for layout in layouts[1:]), "then every timed forward appends one token per session"
    assert target.cache.sessions() == []


def test_one_slow_outlier_is_lowered_to_its_neighbour_not_propagated():
    """A forward slowed by another process (B=2 here) must not cap SPS for every larger B."""
    fitted = monotone_times({1: 0.010, 2: 0.500, 4: 0.012, 8: 0.014, 16: 0.020, 32: 0.040})
    assert fitted == {1: 0.010, 2: 0.012, 4: 0.012, 8: 0.014, 16: 0.020, 32: 0.040}
    assert monotone_times({1: 1.0, 2: 2.0}) == {1: 1.0, 2: 2.0}

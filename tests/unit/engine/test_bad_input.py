"""Bad input gets a typed error naming the value, and never disturbs the other requests being served."""

from __future__ import annotations

import pytest
from reference_decoding import greedy_continuation

from specserve.decoding.sampling import SamplingParams
from specserve.drafters.draft_lm import DraftModelDrafter
from specserve.engine.engine import SpecEngine
from specserve.engine.verifier import LocalVerifier
from specserve.errors import ContextLengthError, IncompatibleDrafterError, InvalidRequestError, ModelLoadError
from specserve.target.model import CausalLM
from tiny_models import tiny_config, tiny_model

VOCAB = 32
CONTEXT = 64
PROMPTS = [[1, 2, 3, 4, 5], [6, 7, 6, 7, 6, 7], [9], [10, 11, 12, 13]]
PARAMS = SamplingParams(max_tokens=12, ignore_eos=True)
BAD_PROMPTS = {
    "empty": ([], "at least one token"),
    "id_equal_to_vocab": ([1, VOCAB, 2], str(VOCAB)),
    "negative_id": ([-1, 3], "-1"),
    "float_id": ([1, 2.5], "2.5"),
    "longer_than_context": ([1] * (CONTEXT + 7), str(CONTEXT + 7)),
}


@pytest.fixture(scope="module")
def target():
    return tiny_model("qwen3", vocab=VOCAB, layers=2, seed=0)


@pytest.fixture(scope="module")
def draft_model():
    return tiny_model("qwen3", vocab=VOCAB, layers=2, seed=1)


@pytest.fixture(scope="module")
def reference(target):
    """Greedy continuations by plain target decoding, memoised by prompt."""
    cache: dict[tuple[int, ...], list[int]] = {}

    def continuation(prompt: list[int], n_tokens: int = PARAMS.max_tokens) -> list[int]:
        key = tuple(prompt)
        if len(cache.get(key, ())) < n_tokens:
            cache[key] = greedy_continuation(target, prompt, n_tokens)
        return cache[key][:n_tokens]

    return continuation


def _engine(target, draft_model, context: int = CONTEXT) -> SpecEngine:
    return SpecEngine(LocalVerifier(CausalLM(target, max_len=context)),
                      DraftModelDrafter(CausalLM(draft_model), max_block=3))


def _run(engine: SpecEngine, steps: int | None = None) -> None:
    """Step the engine `steps` times, or until every request has finished."""
    while engine.has_unfinished() and (steps is None or steps > 0):
        engine.step()
        steps = None if steps is None else steps - 1


def _add_all(engine: SpecEngine, prompts=PROMPTS, **kw):
    return [engine.add_request(p, PARAMS, request_id=f"r{i}", **kw) for i, p in enumerate(prompts)]


def _assert_served(requests, reference) -> None:
    """Every request ran to max_tokens and produced exactly the greedy reference."""
    assert [r.finish_reason for r in requests] == ["length"] * len(requests)
    assert [r.output_ids for r in requests] == [reference(r.prompt_ids) for r in requests]


# ---- loading ---------------------------------------------------------------------------------------
def _missing_path(tmp_path):
    return "/nonexistent/x"


def _empty_dir(tmp_path):
    return str(tmp_path)


def _config_without_weights(tmp_path):
    tiny_config("qwen3", vocab=VOCAB, layers=1).save_pretrained(tmp_path)
    return str(tmp_path)


@pytest.mark.parametrize("make_path", [_missing_path, _empty_dir, _config_without_weights])
def test_unloadable_model_raises_model_load_error_naming_the_path(tmp_path, make_path):
    """A path that holds no loadable model gives ModelLoadError with the path in the message."""
    path = make_path(tmp_path)
    with pytest.raises(ModelLoadError, match=path):
        CausalLM.from_pretrained(path, load_tokenizer=False)


@pytest.mark.parametrize("draft_vocab", [16, 48])
def test_drafter_with_another_vocabulary_is_refused(target, draft_vocab):
    """A drafter whose vocabulary differs from the target's is refused, naming both sizes."""
    drafter = DraftModelDrafter(CausalLM(tiny_model("qwen3", vocab=draft_vocab, layers=1)))
    with pytest.raises(IncompatibleDrafterError) as info:
        SpecEngine(LocalVerifier(CausalLM(target)), drafter)
    assert str(draft_vocab) in str(info.value) and str(VOCAB) in str(info.value)


# ---- requests --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("prompt", "shown"), BAD_PROMPTS.values(), ids=BAD_PROMPTS.keys())
def test_malformed_prompt_is_refused_naming_the_value(target, draft_model, prompt, shown):
    """Empty prompts, ids outside the vocabulary and over-long prompts raise at add_request."""
    engine = _engine(target, draft_model)
    with pytest.raises(InvalidRequestError) as info:
        engine.add_request(prompt, PARAMS)
    assert info.value.field == "prompt" and shown in str(info.value)
    assert not engine.has_unfinished()


@pytest.mark.parametrize("length", [CONTEXT, CONTEXT + 1, 3 * CONTEXT])
def test_prompt_that_leaves_no_room_is_a_context_length_error(target, draft_model, length):
    """A prompt of at least the context window is a ContextLengthError naming its length and the window."""
    with pytest.raises(ContextLengthError) as info:
        _engine(target, draft_model).add_request([1] * length, PARAMS)
    assert str(length) in str(info.value) and str(CONTEXT) in str(info.value)


def test_prompt_one_short_of_the_context_generates_one_token(target, draft_model, reference):
    """The longest valid prompt still gets its one token, then stops for length."""
    engine = _engine(target, draft_model)
    prompt = [3] * (CONTEXT - 1)
    request = engine.add_request(prompt, PARAMS)
    _run(engine)
    assert request.finish_reason == "length" and request.output_ids == reference(prompt, 1)


@pytest.mark.parametrize(
    "kwargs",
    [dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.01), dict(max_tokens=0), dict(max_tokens=-2)],
    ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()),
)
def test_bad_sampling_params_never_reach_the_engine(target, draft_model, kwargs):
    """Out-of-range sampling params raise InvalidRequestError naming the field; nothing is enqueued."""
    engine = _engine(target, draft_model)
    (field, value), = kwargs.items()
    with pytest.raises(InvalidRequestError, match=field) as info:
        engine.add_request(PROMPTS[0], SamplingParams(**kwargs))
    assert str(value) in str(info.value)
    assert not engine.has_unfinished()


# ---- the engine keeps serving ----------------------------------------------------------------------
@pytest.mark.parametrize(("prompt", "shown"), BAD_PROMPTS.values(), ids=BAD_PROMPTS.keys())
def test_bad_request_mid_flight_leaves_running_requests_intact(target, draft_model, reference, prompt, shown):
    """A bad add_request while others are decoding raises, and the others finish exactly as if it had
    never been sent, with every session released."""
    engine = _engine(target, draft_model)
    requests = _add_all(engine)
    _run(engine, steps=2)
    with pytest.raises(InvalidRequestError):
        engine.add_request(prompt, PARAMS)
    _run(engine)
    _assert_served(requests, reference)
    assert engine.verifier.load().running == 0


@pytest.mark.parametrize("steps_before_abort", [0, 2])
def test_abort_finishes_only_that_request(target, draft_model, reference, steps_before_abort):
    """Aborting one request (waiting or running) finishes it with reason "abort" and a final streamed
    delta; its tokens so far are a prefix of its greedy output; the others complete unchanged."""
    engine = _engine(target, draft_model)
    streamed: dict[str, list] = {}
    requests = _add_all(engine, on_output=lambda out: streamed.setdefault(out.request_id, []).append(out))
    _run(engine, steps=steps_before_abort)
    victim = requests[1]
    engine.abort(victim.id)
    _run(engine)
    assert victim.finish_reason == "abort"
    assert len(victim.output_ids) < PARAMS.max_tokens
    assert victim.output_ids == reference(victim.prompt_ids)[: len(victim.output_ids)]
    last = streamed[victim.id][-1]
    assert last.finished and last.finish_reason == "abort"
    _assert_served([r for r in requests if r is not victim], reference)
    assert engine.verifier.load().running == 0


def test_abort_of_an_unknown_id_changes_nothing(target, draft_model, reference):
    """Aborting an id the engine does not hold (typo, already finished) is a no-op."""
    engine = _engine(target, draft_model)
    requests = _add_all(engine)
    _run(engine, steps=1)
    engine.abort("no-such-request")
    _run(engine)
    _assert_served(requests, reference)


def test_duplicate_request_id_does_not_take_down_other_requests(target, draft_model, reference):
    """A request reusing the id of a running one may be refused, but the running request and the valid
    requests admitted in the same step must still be served, and no session may leak."""
    engine = _engine(target, draft_model)
    first = engine.add_request(PROMPTS[0], PARAMS, request_id="dup")
    _run(engine, steps=1)
    others = [engine.add_request(PROMPTS[1], PARAMS, request_id="before")]
    try:
        engine.add_request(PROMPTS[2], PARAMS, request_id="dup")
    except InvalidRequestError:
        pass  # refusing the duplicate at the door is fine
    others.append(engine.add_request(PROMPTS[3], PARAMS, request_id="after"))
    _run(engine)
    _assert_served([first, *others], reference)
    assert engine.verifier.load().running == 0


def test_request_at_the_context_limit_does_not_break_its_batch(target, draft_model, reference):
    """A request close to the context window, verified in one batch with requests that draft several
    tokens, stops for length at the window while the others are served normally."""
    context = 32
    engine = _engine(target, draft_model, context=context)
    near_limit = [5] * (context - 3)
    requests = _add_all(engine, prompts=[near_limit, *PROMPTS[:2]])
    _run(engine)
    assert requests[0].finish_reason == "length"
    assert requests[0].output_ids == reference(near_limit, 3)
    _assert_served(requests[1:], reference)

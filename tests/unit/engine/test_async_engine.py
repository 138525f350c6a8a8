"""AsyncSpecEngine: streamed deltas add up to the output; leaving the stream early frees the sessions."""

import asyncio

from specserve.decoding.sampling import SamplingParams
from specserve.drafters.ngram import NgramDrafter
from specserve.engine.async_engine import AsyncSpecEngine
from specserve.engine.engine import SpecEngine
from specserve.engine.verifier import LocalVerifier
from specserve.target.model import CausalLM
from tiny_models import tiny_model


def make_engine():
    target = CausalLM(tiny_model("qwen3", vocab=64))
    return SpecEngine(LocalVerifier(target), NgramDrafter(max_block=4)), target


def test_stream_concurrent_requests_and_cancel():
    engine, target = make_engine()
    reference = engine.generate([[1, 2, 3, 1, 2]], SamplingParams(max_tokens=20, ignore_eos=True))[0].output_ids

    async def collect(aengine, prompt):
        ids, reasons = [], []
        async for out in aengine.generate(prompt, SamplingParams(max_tokens=20, ignore_eos=True)):
            ids.extend(out.new_token_ids)
            reasons.append(out.finish_reason)
        return ids, reasons

    async def cancel_after_first(aengine):
        async for _ in aengine.generate([5, 6, 7], SamplingParams(max_tokens=10_000, ignore_eos=True)):
            break

    async def main():
        async with AsyncSpecEngine(engine) as aengine:
            results = await asyncio.gather(collect(aengine, [1, 2, 3, 1, 2]), collect(aengine, [1, 2, 3, 1, 2]),
                                           cancel_after_first(aengine))
            for _ in range(200):  # the abort is applied at the engine's next step
                if not engine.has_unfinished():
                    break
                await asyncio.sleep(0.01)
            return results

    (ids_a, reasons_a), (ids_b, _), _ = asyncio.run(main())
    assert ids_a == ids_b == reference
    assert reasons_a[-1] == "length" and all(r is None for r in reasons_a[:-1])
    assert len(target.cache) == 0, "every session, including the cancelled one, is closed"

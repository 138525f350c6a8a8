"""Helpers of the service tests: servers around tiny models, a background event loop, greedy references."""

import asyncio
import copy
import threading

import torch

from services.drafter.server import DrafterServer
from services.drafter.settings import DrafterSettings
from services.verifier.server import VerifierServer
from services.verifier.settings import VerifierSettings
from specserve.drafters.draft_lm import DraftModelDrafter
from specserve.drafters.ngram import NgramDrafter
from specserve.engine.verifier import LocalVerifier
from specserve.target.model import CausalLM
from tiny_models import tiny_model

VOCAB = 64
PROMPTS = [[1, 5, 7, 9, 11, 13, 2, 3, 4, 5, 6, 7], [3, 4, 5], [4, 5, 4, 5, 4, 5], [33] * 9]
FAST = dict(host="127.0.0.1", port=0, shutdown_delay_s=0.0, grace_s=1.0)
SPS = {1: 100.0, 4: 90.0, 16: 60.0}


class LoopThread:
    """An asyncio loop on its own thread: servers run there, the engine and clients on the test's thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def verifier_server(model=None, tap_layers=(), verifier=None, **settings) -> VerifierServer:
    """A verifier server around `verifier`, default a LocalVerifier on a fresh CausalLM (own KV cache) of `model`."""
    if verifier is None:
        model = model if model is not None else tiny_model("qwen3", vocab=VOCAB)
        verifier = LocalVerifier(CausalLM(model), tap_layers=tap_layers)
    config = VerifierSettings(**{**FAST, "sps": SPS, "model": "tiny-qwen3", **settings})
    return VerifierServer(config, verifier)


def drafter_server(drafter, **settings) -> DrafterServer:
    return DrafterServer(DrafterSettings(**{**FAST, "drafter": type(drafter).__name__, **settings}), drafter)


def greedy_reference(model, prompts, max_new):
    """The target's own greedy decoding (transformers `generate`)."""
    refs = []
    for p in prompts:
        out = model.generate(torch.tensor([p]), max_new_tokens=max_new, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
        refs.append(out[0, len(p):].tolist())
    return refs


def noisy_copy(model, scale: float = 0.3, seed: int = 1):
    """A draft LM that mostly agrees with the target: the target with perturbed weights."""
    draft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.std().nan_to_num(0.02))
    return draft


def make_drafter(kind: str, model):
    return NgramDrafter(max_block=4) if kind == "ngram" else DraftModelDrafter(CausalLM(noisy_copy(model)), 3)

"""Pre-train the demo target: a small Qwen3-architecture LM on the Python standard library.

Half of the training windows are wrapped as one chat turn (the user shows the start of a piece of
code, the assistant continues it), so `--chat` prompts and the end-of-turn stop token behave the way
they do with a real instruction-tuned Qwen3. Everything is seeded; the same Python version gives the
same corpus (its fingerprint is recorded) and the same weights on the same torch build.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

from specserve.demo.corpus import Corpus, read_text, stdlib_corpus
from specserve.demo.tokenizer import train_tokenizer

log = logging.getLogger(__name__)


@dataclass
class TargetRecipe:
    """Every knob of the demo target, with the values the committed bundle was built with."""

    seed: int = 1234
    threads: int = 2  # torch intra-op threads (the 2-core machine the bundle was built on)
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 1024
    num_layers: int = 10
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 600
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    chat_fraction: float = 0.5
    window_lines: int = 40
    eval_batches: int = 40


def build_documents(corpus: Corpus, paths, recipe: TargetRecipe, rng: random.Random) -> list[str | tuple]:
    """Plain code windows (str) and chat samples ((user, assistant)) cut from the corpus files."""
    docs: list[str | tuple] = []
    for path in paths:
        lines = read_text(path).splitlines(keepends=True)
        for start in range(0, len(lines), recipe.window_lines):
            window = lines[start: start + recipe.window_lines]
            if len(window) >= 8 and rng.random() < recipe.chat_fraction:
                cut = rng.randint(2, min(10, len(window) - 4))
                docs.append(("".join(window[:cut]).rstrip("\n"), "".join(window[cut:]).rstrip("\n")))
            else:
                docs.append("".join(window))
    return docs


def encode_documents(tokenizer, docs) -> np.ndarray:
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids: list[int] = []
    for doc in tqdm(docs, desc="tokenising", unit="doc", mininterval=2):
        if isinstance(doc, tuple):
            messages = [{"role": "user", "content": doc[0]}, {"role": "assistant", "content": doc[1]}]
            ids.extend(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
        else:
            ids.extend(tokenizer(doc)["input_ids"])
        ids.append(eot)
    return np.asarray(ids, dtype=np.int32)


def target_config(recipe: TargetRecipe, tokenizer) -> Qwen3Config:
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return Qwen3Config(vocab_size=len(tokenizer), hidden_size=recipe.hidden_size,
                       intermediate_size=recipe.intermediate_size, num_hidden_layers=recipe.num_layers,
                       num_attention_heads=recipe.num_heads, num_key_value_heads=recipe.num_kv_heads,
                       head_dim=recipe.head_dim, max_position_embeddings=4096, rope_theta=10000.0,
                       tie_word_embeddings=True, eos_token_id=im_end, pad_token_id=eot, bos_token_id=None)


def _batches(tokens: np.ndarray, recipe: TargetRecipe, gen: np.random.Generator):
    while True:
        starts = gen.integers(0, len(tokens) - recipe.seq_len - 1, size=recipe.batch_size)
        chunk = np.stack([tokens[s: s + recipe.seq_len + 1] for s in starts]).astype(np.int64)
        yield torch.from_numpy(chunk)


def _lr_at(step: int, recipe: TargetRecipe) -> float:
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def heldout_loss(model, tokens: np.ndarray, recipe: TargetRecipe) -> float:
    model.eval()
    gen = np.random.default_rng(recipe.seed + 1)
    batches = _batches(tokens, recipe, gen)
    losses = [model(input_ids=(b := next(batches)), labels=b).loss.item()
              for _ in range(recipe.eval_batches)]
    model.train()
    return float(np.mean(losses))


def pretrain_target(out_dir: Path, recipe: TargetRecipe) -> dict:
    """Train tokenizer + target, save them (bf16 safetensors) in `out_dir`; returns the build facts."""
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    rng = random.Random(recipe.seed)
    corpus = stdlib_corpus()
    log.info("corpus: %d train / %d held-out files under %s", len(corpus.train), len(corpus.heldout), corpus.root)
    train_docs = build_documents(corpus, corpus.train, recipe, rng)
    heldout_docs = build_documents(corpus, corpus.heldout, recipe, rng)
    tokenizer = train_tokenizer((d if isinstance(d, str) else d[0] + d[1] for d in train_docs), recipe.vocab_size)
    train_tokens = encode_documents(tokenizer, train_docs)
    heldout_tokens = encode_documents(tokenizer, heldout_docs)
    log.info("tokens: %d train, %d held-out", len(train_tokens), len(heldout_tokens))

    model = Qwen3ForCausalLM(target_config(recipe, tokenizer))
    n_params = sum(p.numel() for p in model.parameters())
    log.info("target: %.2fM parameters", n_params / 1e6)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95), weight_decay=recipe.weight_decay)
    batches = _batches(train_tokens, recipe, np.random.default_rng(recipe.seed))
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(recipe.steps), desc="pre-training target", unit="step")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, recipe)
        batch = next(batches)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds = time.perf_counter() - t0
    loss = heldout_loss(model, heldout_tokens, recipe)
    facts = {"recipe": asdict(recipe), "parameters": n_params, "train_tokens": int(len(train_tokens)),
             "heldout_tokens": int(len(heldout_tokens)),
             "tokens_seen": recipe.steps * recipe.batch_size * recipe.seq_len,
             "heldout_loss": loss, "heldout_perplexity": math.exp(loss), "train_seconds": round(train_seconds, 1),
             "corpus_root": str(corpus.root), "corpus_fingerprint": corpus.fingerprint(),
             "torch": torch.__version__}
    log.info("held-out loss %.3f (perplexity %.2f) after %.0fs", loss, math.exp(loss), train_seconds)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"), do_sample=False)
    model.to(torch.bfloat16).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "build.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts

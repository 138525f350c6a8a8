"""Conversions between torch/specserve values and the specserve.v1 wire messages.

Every decoder validates what it reads and raises `ItemError` (INVALID_ARGUMENT) naming the field, so a
malformed item fails alone. Tensors travel as raw little-endian bytes in their own dtype; draft
distributions are never truncated or narrowed (see `DraftDistribution` in common.proto), which keeps
rejection sampling exact across the wire.
"""

from __future__ import annotations

import hashlib
import math
import sys

import torch
from google.protobuf.message import Message

from specserve.decoding.sampling import SamplingParams
from specserve.errors import InvalidRequestError
from specserve.v1 import common_pb2 as pb

Code = pb.Status.Code
_MASK64 = (1 << 64) - 1
_TO_WIRE = {torch.float32: pb.DTYPE_FLOAT32, torch.bfloat16: pb.DTYPE_BFLOAT16, torch.float16: pb.DTYPE_FLOAT16,
            torch.float64: pb.DTYPE_FLOAT64}
_FROM_WIRE = {v: k for k, v in _TO_WIRE.items()}
# torch.frombuffer has no bf16 reader on every build: bf16/fp16 go through a same-width integer view
_BITS = {torch.bfloat16: torch.int16, torch.float16: torch.int16}

if sys.byteorder != "little":  # pragma: no cover - the wire format is little-endian raw memory
    raise ImportError("specserve's tensor wire format needs a little-endian host")


class ItemError(Exception):
    """One item of a batched call failed with a per-item status code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code

    def status(self) -> pb.Status:
        return pb.Status(code=self.code, message=str(self))


OK = pb.Status(code=Code.OK)


def fingerprint(item: Message) -> bytes:
    """Digest of an item's content: tells an idempotent retry from a different call with the same key."""
    return hashlib.blake2b(item.SerializeToString(deterministic=True), digest_size=16).digest()


# ---- tensors -----------------------------------------------------------------------------------
def tensor_to_proto(t: torch.Tensor) -> pb.Tensor:
    """A tensor as raw bytes in its own dtype (float32, bfloat16, float16 or float64)."""
    if t.dtype not in _TO_WIRE:
        raise TypeError(f"tensors of dtype {t.dtype} have no wire encoding (use {sorted(map(str, _TO_WIRE))})")
    flat = t.detach().to("cpu").contiguous()
    flat = flat.view(_BITS.get(flat.dtype, flat.dtype))
    return pb.Tensor(dtype=_TO_WIRE[t.dtype], shape=list(t.shape), data=flat.numpy().tobytes())


def tensor_from_proto(msg: pb.Tensor, field: str) -> torch.Tensor:
    """Decode a `Tensor`; `field` names it in the error of a malformed one."""
    dtype = _FROM_WIRE.get(msg.dtype)
    if dtype is None:
        raise ItemError(Code.INVALID_ARGUMENT, f"{field}: unknown dtype {msg.dtype}")
    shape = tuple(msg.shape)
    size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if any(d < 0 for d in shape) or size != len(msg.data):
        raise ItemError(Code.INVALID_ARGUMENT, f"{field}: {len(msg.data)} bytes do not hold shape {list(shape)} "
                                               f"of {dtype}")
    if size == 0:
        return torch.empty(shape, dtype=dtype)
    raw = torch.frombuffer(bytearray(msg.data), dtype=_BITS.get(dtype, dtype))
    return raw.view(dtype).reshape(shape)


def optional_tensor(msg: Message, name: str, field: str) -> torch.Tensor | None:
    """`msg.<name>` decoded, or None when the field is absent."""
    return tensor_from_proto(getattr(msg, name), field) if msg.HasField(name) else None


# ---- draft distributions -----------------------------------------------------------------------
def q_to_proto(q: torch.Tensor) -> pb.DraftDistribution:
    """Encode q exactly: every non-zero entry when that is smaller than the dense matrix, else dense."""
    nonzero = q != 0
    count = int(nonzero.sum())
    if q.dtype != torch.float64 and count * 8 < q.numel() * q.element_size():  # id + fp32 prob per entry
        rows, ids = nonzero.nonzero(as_tuple=True)
        sparse = pb.SparseRows(row_lengths=nonzero.sum(-1).tolist(), ids=ids.tolist(),
                               probs=q[rows, ids].float().tolist(), columns=q.shape[-1])
        return pb.DraftDistribution(sparse=sparse)
    return pb.DraftDistribution(dense=tensor_to_proto(q))


def q_from_proto(msg: pb.DraftDistribution, rows: int, vocab: int | None, field: str = "q") -> torch.Tensor:
    """Decode q as a dense [rows, V] tensor, checking its shape (and V == `vocab` when that is known)."""
    if msg.HasField("dense"):
        q = tensor_from_proto(msg.dense, f"{field}.dense")
        if q.dim() != 2 or q.shape[0] != rows or (vocab is not None and q.shape[1] != vocab):
            raise ItemError(Code.INVALID_ARGUMENT, f"{field}: shape {list(q.shape)}, expected [{rows}, {vocab or 'V'}]")
        return q
    sparse = msg.sparse
    columns, lengths = sparse.columns, list(sparse.row_lengths)
    if vocab is not None and columns != vocab:
        raise ItemError(Code.INVALID_ARGUMENT, f"{field}.sparse.columns: {columns}, expected the vocabulary {vocab}")
    if len(lengths) != rows or any(n < 0 for n in lengths) or sum(lengths) != len(sparse.ids) \
            or len(sparse.ids) != len(sparse.probs):
        raise ItemError(Code.INVALID_ARGUMENT, f"{field}.sparse: {len(lengths)} rows of {sum(lengths)} entries with "
                                               f"{len(sparse.ids)} ids and {len(sparse.probs)} probs, expected "
                                               f"{rows} rows")
    ids = torch.tensor(sparse.ids, dtype=torch.long)
    if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < columns):
        raise ItemError(Code.INVALID_ARGUMENT, f"{field}.sparse.ids: must lie in [0, {columns})")
    q = torch.zeros(rows, columns, dtype=torch.float32)
    row_of = torch.repeat_interleave(torch.arange(rows), torch.tensor(lengths, dtype=torch.long))
    q[row_of, ids] = torch.tensor(sparse.probs, dtype=torch.float32)
    return q


# ---- sampling parameters -----------------------------------------------------------------------
def sampling_to_proto(p: SamplingParams) -> pb.SamplingParams:
    msg = pb.SamplingParams(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, max_tokens=p.max_tokens,
                            stop=list(p.stop), stop_token_ids=list(p.stop_token_ids), ignore_eos=p.ignore_eos)
    if p.seed is not None:
        msg.seed = p.seed & _MASK64  # the RNG keys on these 64 bits only
    return msg


def sampling_from_proto(msg: pb.SamplingParams) -> SamplingParams:
    """Validated SamplingParams; a greedy request without a seed gets seed 0 (greedy draws use none)."""
    seed = msg.seed if msg.HasField("seed") else None
    if seed is None:
        if msg.temperature != 0.0:
            raise ItemError(Code.INVALID_ARGUMENT, "sampling.seed: required for sampled requests (the gateway fixes "
                                                   "it at admission)")
        seed = 0
    extra = {"max_tokens": msg.max_tokens} if msg.HasField("max_tokens") else {}
    try:
        return SamplingParams(temperature=msg.temperature, top_p=msg.top_p if msg.HasField("top_p") else 1.0,
                              top_k=msg.top_k, seed=seed, stop=tuple(msg.stop),
                              stop_token_ids=tuple(msg.stop_token_ids), ignore_eos=msg.ignore_eos, **extra)
    except InvalidRequestError as exc:
        raise ItemError(Code.INVALID_ARGUMENT, f"sampling.{exc}") from None


def check_ids(ids, vocab: int | None, field: str) -> list[int]:
    """Token ids as a list, each in [0, vocab) when the vocabulary is known."""
    ids = list(ids)
    if vocab is not None and any(not 0 <= t < vocab for t in ids):
        raise ItemError(Code.INVALID_ARGUMENT, f"{field}: token ids must lie in [0, {vocab})")
    return ids

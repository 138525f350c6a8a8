from specserve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VerifierOpenRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[VerifierOpenItem]
    def __init__(self, items: _Optional[_Iterable[_Union[VerifierOpenItem, _Mapping]]] = ...) -> None: ...

class VerifierOpenItem(_message.Message):
    __slots__ = ("session", "prompt_ids", "sampling", "resume_token", "skip_taps", "defer_taps")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SKIP_TAPS_FIELD_NUMBER: _ClassVar[int]
    DEFER_TAPS_FIELD_NUMBER: _ClassVar[int]
    session: str
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _common_pb2.SamplingParams
    resume_token: int
    skip_taps: bool
    defer_taps: bool
    def __init__(self, session: _Optional[str] = ..., prompt_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., resume_token: _Optional[int] = ..., skip_taps: _Optional[bool] = ..., defer_taps: _Optional[bool] = ...) -> None: ...

class VerifierOpenResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[VerifierOpenResult]
    def __init__(self, results: _Optional[_Iterable[_Union[VerifierOpenResult, _Mapping]]] = ...) -> None: ...

class VerifierOpenResult(_message.Message):
    __slots__ = ("session", "status", "token", "taps")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TAPS_FIELD_NUMBER: _ClassVar[int]
    session: str
    status: _common_pb2.Status
    token: int
    taps: _common_pb2.Tensor
    def __init__(self, session: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.Status, _Mapping]] = ..., token: _Optional[int] = ..., taps: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[VerifyItem]
    def __init__(self, items: _Optional[_Iterable[_Union[VerifyItem, _Mapping]]] = ...) -> None: ...

class VerifyItem(_message.Message):
    __slots__ = ("session", "committed_len", "draft_ids", "q", "sampling", "position", "skip_taps", "defer_taps")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_LEN_FIELD_NUMBER: _ClassVar[int]
    DRAFT_IDS_FIELD_NUMBER: _ClassVar[int]
    Q_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    SKIP_TAPS_FIELD_NUMBER: _ClassVar[int]
    DEFER_TAPS_FIELD_NUMBER: _ClassVar[int]
    session: str
    committed_len: int
    draft_ids: _containers.RepeatedScalarFieldContainer[int]
    q: _common_pb2.DraftDistribution
    sampling: _common_pb2.SamplingParams
    position: int
    skip_taps: bool
    defer_taps: bool
    def __init__(self, session: _Optional[str] = ..., committed_len: _Optional[int] = ..., draft_ids: _Optional[_Iterable[int]] = ..., q: _Optional[_Union[_common_pb2.DraftDistribution, _Mapping]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., position: _Optional[int] = ..., skip_taps: _Optional[bool] = ..., defer_taps: _Optional[bool] = ...) -> None: ...

class TakeTapsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[TakeTapsItem]
    def __init__(self, items: _Optional[_Iterable[_Union[TakeTapsItem, _Mapping]]] = ...) -> None: ...

class TakeTapsItem(_message.Message):
    __slots__ = ("session", "committed_len")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_LEN_FIELD_NUMBER: _ClassVar[int]
    session: str
    committed_len: int
    def __init__(self, session: _Optional[str] = ..., committed_len: _Optional[int] = ...) -> None: ...

class TakeTapsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TakeTapsResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TakeTapsResult, _Mapping]]] = ...) -> None: ...

class TakeTapsResult(_message.Message):
    __slots__ = ("session", "status", "taps")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TAPS_FIELD_NUMBER: _ClassVar[int]
    session: str
    status: _common_pb2.Status
    taps: _common_pb2.Tensor
    def __init__(self, session: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.Status, _Mapping]] = ..., taps: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[VerifyResult]
    def __init__(self, results: _Optional[_Iterable[_Union[VerifyResult, _Mapping]]] = ...) -> None: ...

class VerifyResult(_message.Message):
    __slots__ = ("session", "status", "accepted", "tokens", "taps")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TAPS_FIELD_NUMBER: _ClassVar[int]
    session: str
    status: _common_pb2.Status
    accepted: int
    tokens: _containers.RepeatedScalarFieldContainer[int]
    taps: _common_pb2.Tensor
    def __init__(self, session: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.Status, _Mapping]] = ..., accepted: _Optional[int] = ..., tokens: _Optional[_Iterable[int]] = ..., taps: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ...) -> None: ...

class GetLoadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SpsPoint(_message.Message):
    __slots__ = ("tokens", "steps_per_second")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    tokens: int
    steps_per_second: float
    def __init__(self, tokens: _Optional[int] = ..., steps_per_second: _Optional[float] = ...) -> None: ...

class LoadReport(_message.Message):
    __slots__ = ("sps", "running_sessions", "queue_depth", "cached_tokens", "max_sessions", "draining", "padding_cost", "plain_sps")
    SPS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    PADDING_COST_FIELD_NUMBER: _ClassVar[int]
    PLAIN_SPS_FIELD_NUMBER: _ClassVar[int]
    sps: _containers.RepeatedCompositeFieldContainer[SpsPoint]
    running_sessions: int
    queue_depth: int
    cached_tokens: int
    max_sessions: int
    draining: bool
    padding_cost: float
    plain_sps: _containers.RepeatedCompositeFieldContainer[SpsPoint]
    def __init__(self, sps: _Optional[_Iterable[_Union[SpsPoint, _Mapping]]] = ..., running_sessions: _Optional[int] = ..., queue_depth: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., max_sessions: _Optional[int] = ..., draining: _Optional[bool] = ..., padding_cost: _Optional[float] = ..., plain_sps: _Optional[_Iterable[_Union[SpsPoint, _Mapping]]] = ...) -> None: ...

class VerifierInfo(_message.Message):
    __slots__ = ("vocab_size", "max_context", "eos_token_ids", "tap_layers", "model", "dtype")
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TAP_LAYERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    vocab_size: int
    max_context: int
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    tap_layers: _containers.RepeatedScalarFieldContainer[int]
    model: str
    dtype: str
    def __init__(self, vocab_size: _Optional[int] = ..., max_context: _Optional[int] = ..., eos_token_ids: _Optional[_Iterable[int]] = ..., tap_layers: _Optional[_Iterable[int]] = ..., model: _Optional[str] = ..., dtype: _Optional[str] = ...) -> None: ...

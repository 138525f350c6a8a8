from specserve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DrafterOpenRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[DrafterOpenItem]
    def __init__(self, items: _Optional[_Iterable[_Union[DrafterOpenItem, _Mapping]]] = ...) -> None: ...

class DrafterOpenItem(_message.Message):
    __slots__ = ("session", "token_ids", "taps")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TAPS_FIELD_NUMBER: _ClassVar[int]
    session: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    taps: _common_pb2.Tensor
    def __init__(self, session: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., taps: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ...) -> None: ...

class DrafterOpenResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[DrafterOpenResult]
    def __init__(self, results: _Optional[_Iterable[_Union[DrafterOpenResult, _Mapping]]] = ...) -> None: ...

class DrafterOpenResult(_message.Message):
    __slots__ = ("session", "status")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    session: str
    status: _common_pb2.Status
    def __init__(self, session: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.Status, _Mapping]] = ...) -> None: ...

class ProposeRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ProposeItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ProposeItem, _Mapping]]] = ...) -> None: ...

class ProposeItem(_message.Message):
    __slots__ = ("session", "new_ids", "committed_len", "max_tokens", "sampling", "position", "new_taps")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    NEW_IDS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_LEN_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    NEW_TAPS_FIELD_NUMBER: _ClassVar[int]
    session: str
    new_ids: _containers.RepeatedScalarFieldContainer[int]
    committed_len: int
    max_tokens: int
    sampling: _common_pb2.SamplingParams
    position: int
    new_taps: _common_pb2.Tensor
    def __init__(self, session: _Optional[str] = ..., new_ids: _Optional[_Iterable[int]] = ..., committed_len: _Optional[int] = ..., max_tokens: _Optional[int] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., position: _Optional[int] = ..., new_taps: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ...) -> None: ...

class ProposeResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ProposeResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ProposeResult, _Mapping]]] = ...) -> None: ...

class ProposeResult(_message.Message):
    __slots__ = ("session", "status", "ids", "q", "confidence")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    Q_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    session: str
    status: _common_pb2.Status
    ids: _containers.RepeatedScalarFieldContainer[int]
    q: _common_pb2.DraftDistribution
    confidence: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, session: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.Status, _Mapping]] = ..., ids: _Optional[_Iterable[int]] = ..., q: _Optional[_Union[_common_pb2.DraftDistribution, _Mapping]] = ..., confidence: _Optional[_Iterable[float]] = ...) -> None: ...

class DrafterInfo(_message.Message):
    __slots__ = ("target_layer_ids", "max_block", "vocab_size", "drafter")
    TARGET_LAYER_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_BLOCK_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    DRAFTER_FIELD_NUMBER: _ClassVar[int]
    target_layer_ids: _containers.RepeatedScalarFieldContainer[int]
    max_block: int
    vocab_size: int
    drafter: str
    def __init__(self, target_layer_ids: _Optional[_Iterable[int]] = ..., max_block: _Optional[int] = ..., vocab_size: _Optional[int] = ..., drafter: _Optional[str] = ...) -> None: ...

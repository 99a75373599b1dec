from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SelectionRule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SELECTION_RULE_UNSPECIFIED: _ClassVar[SelectionRule]
    ARGMIN: _ClassVar[SelectionRule]
    SOFTMAX: _ClassVar[SelectionRule]
SELECTION_RULE_UNSPECIFIED: SelectionRule
ARGMIN: SelectionRule
SOFTMAX: SelectionRule

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoding", "data", "height", "width")
    class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ENCODING_UNSPECIFIED: _ClassVar[Image.Encoding]
        JPEG: _ClassVar[Image.Encoding]
        PNG: _ClassVar[Image.Encoding]
        RAW: _ClassVar[Image.Encoding]
    ENCODING_UNSPECIFIED: Image.Encoding
    JPEG: Image.Encoding
    PNG: Image.Encoding
    RAW: Image.Encoding
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    encoding: Image.Encoding
    data: bytes
    height: int
    width: int
    def __init__(self, encoding: _Optional[_Union[Image.Encoding, str]] = ..., data: _Optional[bytes] = ..., height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class Observation(_message.Message):
    __slots__ = ("images", "state", "lowdim", "instruction")
    class ImagesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Image
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LOWDIM_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    images: _containers.MessageMap[str, Image]
    state: Tensor
    lowdim: Tensor
    instruction: str
    def __init__(self, images: _Optional[_Mapping[str, Image]] = ..., state: _Optional[_Union[Tensor, _Mapping]] = ..., lowdim: _Optional[_Union[Tensor, _Mapping]] = ..., instruction: _Optional[str] = ...) -> None: ...

class SelectParams(_message.Message):
    __slots__ = ("num_candidates", "sigma_scale", "seed", "rule", "temperature", "return_candidates", "switch_margin")
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SIGMA_SCALE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    RETURN_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SWITCH_MARGIN_FIELD_NUMBER: _ClassVar[int]
    num_candidates: int
    sigma_scale: float
    seed: int
    rule: SelectionRule
    temperature: float
    return_candidates: bool
    switch_margin: float
    def __init__(self, num_candidates: _Optional[int] = ..., sigma_scale: _Optional[float] = ..., seed: _Optional[int] = ..., rule: _Optional[_Union[SelectionRule, str]] = ..., temperature: _Optional[float] = ..., return_candidates: _Optional[bool] = ..., switch_margin: _Optional[float] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("validation_seconds", "queue_seconds", "policy_seconds", "candidates_seconds", "score_seconds", "inference_seconds", "total_seconds")
    VALIDATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    POLICY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SCORE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    validation_seconds: float
    queue_seconds: float
    policy_seconds: float
    candidates_seconds: float
    score_seconds: float
    inference_seconds: float
    total_seconds: float
    def __init__(self, validation_seconds: _Optional[float] = ..., queue_seconds: _Optional[float] = ..., policy_seconds: _Optional[float] = ..., candidates_seconds: _Optional[float] = ..., score_seconds: _Optional[float] = ..., inference_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ...) -> None: ...

class SelectActionRequest(_message.Message):
    __slots__ = ("observation", "params")
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    observation: Observation
    params: SelectParams
    def __init__(self, observation: _Optional[_Union[Observation, _Mapping]] = ..., params: _Optional[_Union[SelectParams, _Mapping]] = ...) -> None: ...

class SelectActionResponse(_message.Message):
    __slots__ = ("chunk", "index", "energies", "candidates", "fallback", "fallback_reason", "model_version", "timing", "batch_size")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ENERGIES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    chunk: Tensor
    index: int
    energies: Tensor
    candidates: Tensor
    fallback: bool
    fallback_reason: str
    model_version: str
    timing: Timing
    batch_size: int
    def __init__(self, chunk: _Optional[_Union[Tensor, _Mapping]] = ..., index: _Optional[int] = ..., energies: _Optional[_Union[Tensor, _Mapping]] = ..., candidates: _Optional[_Union[Tensor, _Mapping]] = ..., fallback: _Optional[bool] = ..., fallback_reason: _Optional[str] = ..., model_version: _Optional[str] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., batch_size: _Optional[int] = ...) -> None: ...

class ScoreCandidatesRequest(_message.Message):
    __slots__ = ("hidden", "valid", "candidates", "normalized")
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    VALID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    hidden: Tensor
    valid: Tensor
    candidates: Tensor
    normalized: bool
    def __init__(self, hidden: _Optional[_Union[Tensor, _Mapping]] = ..., valid: _Optional[_Union[Tensor, _Mapping]] = ..., candidates: _Optional[_Union[Tensor, _Mapping]] = ..., normalized: _Optional[bool] = ...) -> None: ...

class ScoreCandidatesResponse(_message.Message):
    __slots__ = ("energies", "argmin", "model_version", "timing")
    ENERGIES_FIELD_NUMBER: _ClassVar[int]
    ARGMIN_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    energies: Tensor
    argmin: _containers.RepeatedScalarFieldContainer[int]
    model_version: str
    timing: Timing
    def __init__(self, energies: _Optional[_Union[Tensor, _Mapping]] = ..., argmin: _Optional[_Iterable[int]] = ..., model_version: _Optional[str] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_version", "policy_name", "chunk_len", "action_dim", "hidden_size", "num_layers", "action_low", "action_high", "cameras", "image_height", "image_width", "state_dim", "lowdim_dim", "gripper_dims", "max_candidates", "default_candidates", "scorer_backend", "max_batch", "switch_margin", "sampler_sigmas", "gripper_mode", "calibrated_switch_n", "calibrated_switch_rate")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    CHUNK_LEN_FIELD_NUMBER: _ClassVar[int]
    ACTION_DIM_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    ACTION_LOW_FIELD_NUMBER: _ClassVar[int]
    ACTION_HIGH_FIELD_NUMBER: _ClassVar[int]
    CAMERAS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    STATE_DIM_FIELD_NUMBER: _ClassVar[int]
    LOWDIM_DIM_FIELD_NUMBER: _ClassVar[int]
    GRIPPER_DIMS_FIELD_NUMBER: _ClassVar[int]
    MAX_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SCORER_BACKEND_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    SWITCH_MARGIN_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_SIGMAS_FIELD_NUMBER: _ClassVar[int]
    GRIPPER_MODE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_SWITCH_N_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_SWITCH_RATE_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    policy_name: str
    chunk_len: int
    action_dim: int
    hidden_size: int
    num_layers: int
    action_low: _containers.RepeatedScalarFieldContainer[float]
    action_high: _containers.RepeatedScalarFieldContainer[float]
    cameras: _containers.RepeatedScalarFieldContainer[str]
    image_height: int
    image_width: int
    state_dim: int
    lowdim_dim: int
    gripper_dims: _containers.RepeatedScalarFieldContainer[int]
    max_candidates: int
    default_candidates: int
    scorer_backend: str
    max_batch: int
    switch_margin: float
    sampler_sigmas: _containers.RepeatedScalarFieldContainer[float]
    gripper_mode: str
    calibrated_switch_n: _containers.RepeatedScalarFieldContainer[int]
    calibrated_switch_rate: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, model_version: _Optional[str] = ..., policy_name: _Optional[str] = ..., chunk_len: _Optional[int] = ..., action_dim: _Optional[int] = ..., hidden_size: _Optional[int] = ..., num_layers: _Optional[int] = ..., action_low: _Optional[_Iterable[float]] = ..., action_high: _Optional[_Iterable[float]] = ..., cameras: _Optional[_Iterable[str]] = ..., image_height: _Optional[int] = ..., image_width: _Optional[int] = ..., state_dim: _Optional[int] = ..., lowdim_dim: _Optional[int] = ..., gripper_dims: _Optional[_Iterable[int]] = ..., max_candidates: _Optional[int] = ..., default_candidates: _Optional[int] = ..., scorer_backend: _Optional[str] = ..., max_batch: _Optional[int] = ..., switch_margin: _Optional[float] = ..., sampler_sigmas: _Optional[_Iterable[float]] = ..., gripper_mode: _Optional[str] = ..., calibrated_switch_n: _Optional[_Iterable[int]] = ..., calibrated_switch_rate: _Optional[_Iterable[float]] = ...) -> None: ...

class ReloadEnergyHeadRequest(_message.Message):
    __slots__ = ("energy_path",)
    ENERGY_PATH_FIELD_NUMBER: _ClassVar[int]
    energy_path: str
    def __init__(self, energy_path: _Optional[str] = ...) -> None: ...

class ReloadEnergyHeadResponse(_message.Message):
    __slots__ = ("previous_version", "model_version", "load_seconds")
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    previous_version: str
    model_version: str
    load_seconds: float
    def __init__(self, previous_version: _Optional[str] = ..., model_version: _Optional[str] = ..., load_seconds: _Optional[float] = ...) -> None: ...

from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("data", "shape", "dtype")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    def __init__(self, data: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ...) -> None: ...

class Metadata(_message.Message):
    __slots__ = ("entries",)
    class EntriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.ScalarMap[str, str]
    def __init__(self, entries: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LabelRequest(_message.Message):
    __slots__ = ("topic", "ids", "inputs", "metadata", "request_id")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    topic: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    inputs: Tensor
    metadata: _containers.RepeatedCompositeFieldContainer[Metadata]
    request_id: str
    def __init__(self, topic: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., metadata: _Optional[_Iterable[_Union[Metadata, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class LabelResponse(_message.Message):
    __slots__ = ("request_id", "ids", "accepted", "label", "confidence", "weight", "threshold", "reason", "offset", "teacher_version", "policy", "positive", "negative")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TEACHER_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    accepted: _containers.RepeatedScalarFieldContainer[bool]
    label: _containers.RepeatedScalarFieldContainer[int]
    confidence: _containers.RepeatedScalarFieldContainer[float]
    weight: _containers.RepeatedScalarFieldContainer[float]
    threshold: _containers.RepeatedScalarFieldContainer[float]
    reason: _containers.RepeatedScalarFieldContainer[str]
    offset: _containers.RepeatedScalarFieldContainer[int]
    teacher_version: _containers.RepeatedScalarFieldContainer[str]
    policy: str
    positive: _containers.RepeatedCompositeFieldContainer[ClassList]
    negative: _containers.RepeatedCompositeFieldContainer[ClassList]
    def __init__(self, request_id: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., accepted: _Optional[_Iterable[bool]] = ..., label: _Optional[_Iterable[int]] = ..., confidence: _Optional[_Iterable[float]] = ..., weight: _Optional[_Iterable[float]] = ..., threshold: _Optional[_Iterable[float]] = ..., reason: _Optional[_Iterable[str]] = ..., offset: _Optional[_Iterable[int]] = ..., teacher_version: _Optional[_Iterable[str]] = ..., policy: _Optional[str] = ..., positive: _Optional[_Iterable[_Union[ClassList, _Mapping]]] = ..., negative: _Optional[_Iterable[_Union[ClassList, _Mapping]]] = ...) -> None: ...

class ClassList(_message.Message):
    __slots__ = ("classes",)
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, classes: _Optional[_Iterable[int]] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("topic", "group", "consumer", "max_batch", "include_samples", "columnar")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    COLUMNAR_FIELD_NUMBER: _ClassVar[int]
    topic: str
    group: str
    consumer: str
    max_batch: int
    include_samples: bool
    columnar: bool
    def __init__(self, topic: _Optional[str] = ..., group: _Optional[str] = ..., consumer: _Optional[str] = ..., max_batch: _Optional[int] = ..., include_samples: bool = ..., columnar: bool = ...) -> None: ...

class PseudoLabel(_message.Message):
    __slots__ = ("offset", "id", "label", "confidence", "weight", "threshold", "teacher_version", "policy", "deliveries", "sample", "metadata", "positive", "negative", "created_at")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TEACHER_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    offset: int
    id: str
    label: int
    confidence: float
    weight: float
    threshold: float
    teacher_version: str
    policy: str
    deliveries: int
    sample: Tensor
    metadata: _containers.ScalarMap[str, str]
    positive: _containers.RepeatedScalarFieldContainer[int]
    negative: _containers.RepeatedScalarFieldContainer[int]
    created_at: float
    def __init__(self, offset: _Optional[int] = ..., id: _Optional[str] = ..., label: _Optional[int] = ..., confidence: _Optional[float] = ..., weight: _Optional[float] = ..., threshold: _Optional[float] = ..., teacher_version: _Optional[str] = ..., policy: _Optional[str] = ..., deliveries: _Optional[int] = ..., sample: _Optional[_Union[Tensor, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., positive: _Optional[_Iterable[int]] = ..., negative: _Optional[_Iterable[int]] = ..., created_at: _Optional[float] = ...) -> None: ...

class PseudoLabelBatch(_message.Message):
    __slots__ = ("topic", "labels", "columns")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    labels: _containers.RepeatedCompositeFieldContainer[PseudoLabel]
    columns: LabelColumns
    def __init__(self, topic: _Optional[str] = ..., labels: _Optional[_Iterable[_Union[PseudoLabel, _Mapping]]] = ..., columns: _Optional[_Union[LabelColumns, _Mapping]] = ...) -> None: ...

class LabelColumns(_message.Message):
    __slots__ = ("offset", "id", "label", "confidence", "weight", "threshold", "teacher_version", "policy", "deliveries", "samples", "metadata", "positive", "negative", "created_at")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TEACHER_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    offset: bytes
    id: _containers.RepeatedScalarFieldContainer[str]
    label: bytes
    confidence: bytes
    weight: bytes
    threshold: bytes
    teacher_version: _containers.RepeatedScalarFieldContainer[str]
    policy: _containers.RepeatedScalarFieldContainer[str]
    deliveries: bytes
    samples: Tensor
    metadata: _containers.RepeatedCompositeFieldContainer[Metadata]
    positive: _containers.RepeatedCompositeFieldContainer[ClassList]
    negative: _containers.RepeatedCompositeFieldContainer[ClassList]
    created_at: bytes
    def __init__(self, offset: _Optional[bytes] = ..., id: _Optional[_Iterable[str]] = ..., label: _Optional[bytes] = ..., confidence: _Optional[bytes] = ..., weight: _Optional[bytes] = ..., threshold: _Optional[bytes] = ..., teacher_version: _Optional[_Iterable[str]] = ..., policy: _Optional[_Iterable[str]] = ..., deliveries: _Optional[bytes] = ..., samples: _Optional[_Union[Tensor, _Mapping]] = ..., metadata: _Optional[_Iterable[_Union[Metadata, _Mapping]]] = ..., positive: _Optional[_Iterable[_Union[ClassList, _Mapping]]] = ..., negative: _Optional[_Iterable[_Union[ClassList, _Mapping]]] = ..., created_at: _Optional[bytes] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("topic", "group", "consumer", "offsets")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    group: str
    consumer: str
    offsets: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, topic: _Optional[str] = ..., group: _Optional[str] = ..., consumer: _Optional[str] = ..., offsets: _Optional[_Iterable[int]] = ...) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ("acked", "committed_offset")
    ACKED_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_OFFSET_FIELD_NUMBER: _ClassVar[int]
    acked: int
    committed_offset: int
    def __init__(self, acked: _Optional[int] = ..., committed_offset: _Optional[int] = ...) -> None: ...

class GetTopicRequest(_message.Message):
    __slots__ = ("topic", "groups")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    groups: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, topic: _Optional[str] = ..., groups: _Optional[_Iterable[str]] = ...) -> None: ...

class TopicState(_message.Message):
    __slots__ = ("topic", "teacher", "teacher_version", "policy", "thresholds", "classes", "samples", "accepted", "accepted_per_class", "log_end_offset", "group_lag", "group_committed", "predicted_per_class", "quantity", "quality", "audited", "input_shape", "input_dtype")
    class GroupLagEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class GroupCommittedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    TEACHER_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    LOG_END_OFFSET_FIELD_NUMBER: _ClassVar[int]
    GROUP_LAG_FIELD_NUMBER: _ClassVar[int]
    GROUP_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    AUDITED_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    INPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    topic: str
    teacher: str
    teacher_version: str
    policy: str
    thresholds: _containers.RepeatedScalarFieldContainer[float]
    classes: _containers.RepeatedScalarFieldContainer[str]
    samples: int
    accepted: int
    accepted_per_class: _containers.RepeatedScalarFieldContainer[int]
    log_end_offset: int
    group_lag: _containers.ScalarMap[str, int]
    group_committed: _containers.ScalarMap[str, int]
    predicted_per_class: _containers.RepeatedScalarFieldContainer[int]
    quantity: float
    quality: float
    audited: int
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    input_dtype: str
    def __init__(self, topic: _Optional[str] = ..., teacher: _Optional[str] = ..., teacher_version: _Optional[str] = ..., policy: _Optional[str] = ..., thresholds: _Optional[_Iterable[float]] = ..., classes: _Optional[_Iterable[str]] = ..., samples: _Optional[int] = ..., accepted: _Optional[int] = ..., accepted_per_class: _Optional[_Iterable[int]] = ..., log_end_offset: _Optional[int] = ..., group_lag: _Optional[_Mapping[str, int]] = ..., group_committed: _Optional[_Mapping[str, int]] = ..., predicted_per_class: _Optional[_Iterable[int]] = ..., quantity: _Optional[float] = ..., quality: _Optional[float] = ..., audited: _Optional[int] = ..., input_shape: _Optional[_Iterable[int]] = ..., input_dtype: _Optional[str] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("topic", "group", "consumer", "offsets", "loss_before", "loss_after", "audit_offsets", "audit_labels", "step")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    LOSS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    LOSS_AFTER_FIELD_NUMBER: _ClassVar[int]
    AUDIT_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_LABELS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    topic: str
    group: str
    consumer: str
    offsets: _containers.RepeatedScalarFieldContainer[int]
    loss_before: float
    loss_after: float
    audit_offsets: _containers.RepeatedScalarFieldContainer[int]
    audit_labels: _containers.RepeatedScalarFieldContainer[int]
    step: int
    def __init__(self, topic: _Optional[str] = ..., group: _Optional[str] = ..., consumer: _Optional[str] = ..., offsets: _Optional[_Iterable[int]] = ..., loss_before: _Optional[float] = ..., loss_after: _Optional[float] = ..., audit_offsets: _Optional[_Iterable[int]] = ..., audit_labels: _Optional[_Iterable[int]] = ..., step: _Optional[int] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("key", "audited", "audit_correct")
    KEY_FIELD_NUMBER: _ClassVar[int]
    AUDITED_FIELD_NUMBER: _ClassVar[int]
    AUDIT_CORRECT_FIELD_NUMBER: _ClassVar[int]
    key: str
    audited: int
    audit_correct: int
    def __init__(self, key: _Optional[str] = ..., audited: _Optional[int] = ..., audit_correct: _Optional[int] = ...) -> None: ...

class PublishTeacherRequest(_message.Message):
    __slots__ = ("teacher", "model_dir")
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIR_FIELD_NUMBER: _ClassVar[int]
    teacher: str
    model_dir: str
    def __init__(self, teacher: _Optional[str] = ..., model_dir: _Optional[str] = ...) -> None: ...

class RollbackTeacherRequest(_message.Message):
    __slots__ = ("teacher", "version")
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    teacher: str
    version: str
    def __init__(self, teacher: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class TeacherVersion(_message.Message):
    __slots__ = ("teacher", "version", "versions")
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    teacher: str
    version: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, teacher: _Optional[str] = ..., version: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ...) -> None: ...

class ProposeTeacherRequest(_message.Message):
    __slots__ = ("topic", "model_onnx", "trained_from_offset", "trained_to_offset", "note")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    MODEL_ONNX_FIELD_NUMBER: _ClassVar[int]
    TRAINED_FROM_OFFSET_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TO_OFFSET_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    topic: str
    model_onnx: bytes
    trained_from_offset: int
    trained_to_offset: int
    note: str
    def __init__(self, topic: _Optional[str] = ..., model_onnx: _Optional[bytes] = ..., trained_from_offset: _Optional[int] = ..., trained_to_offset: _Optional[int] = ..., note: _Optional[str] = ...) -> None: ...

class AuditFigures(_message.Message):
    __slots__ = ("accuracy", "ece", "temperature", "samples")
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ECE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    accuracy: float
    ece: float
    temperature: float
    samples: int
    def __init__(self, accuracy: _Optional[float] = ..., ece: _Optional[float] = ..., temperature: _Optional[float] = ..., samples: _Optional[int] = ...) -> None: ...

class ProposalResult(_message.Message):
    __slots__ = ("promoted", "version", "reason", "candidate", "current", "candidate_id", "ema")
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    EMA_FIELD_NUMBER: _ClassVar[int]
    promoted: bool
    version: str
    reason: str
    candidate: AuditFigures
    current: AuditFigures
    candidate_id: str
    ema: bool
    def __init__(self, promoted: bool = ..., version: _Optional[str] = ..., reason: _Optional[str] = ..., candidate: _Optional[_Union[AuditFigures, _Mapping]] = ..., current: _Optional[_Union[AuditFigures, _Mapping]] = ..., candidate_id: _Optional[str] = ..., ema: bool = ...) -> None: ...

class TeacherHistoryRequest(_message.Message):
    __slots__ = ("teacher",)
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    teacher: str
    def __init__(self, teacher: _Optional[str] = ...) -> None: ...

class VersionRecord(_message.Message):
    __slots__ = ("version", "parent", "origin", "proposer", "topic", "trained_from_offset", "trained_to_offset", "audit", "decision", "reason", "created_at", "candidate_id", "note")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    PROPOSER_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    TRAINED_FROM_OFFSET_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TO_OFFSET_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    version: str
    parent: str
    origin: str
    proposer: str
    topic: str
    trained_from_offset: int
    trained_to_offset: int
    audit: AuditFigures
    decision: str
    reason: str
    created_at: float
    candidate_id: str
    note: str
    def __init__(self, version: _Optional[str] = ..., parent: _Optional[str] = ..., origin: _Optional[str] = ..., proposer: _Optional[str] = ..., topic: _Optional[str] = ..., trained_from_offset: _Optional[int] = ..., trained_to_offset: _Optional[int] = ..., audit: _Optional[_Union[AuditFigures, _Mapping]] = ..., decision: _Optional[str] = ..., reason: _Optional[str] = ..., created_at: _Optional[float] = ..., candidate_id: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class TeacherHistoryResponse(_message.Message):
    __slots__ = ("teacher", "served_version", "records")
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    SERVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    teacher: str
    served_version: str
    records: _containers.RepeatedCompositeFieldContainer[VersionRecord]
    def __init__(self, teacher: _Optional[str] = ..., served_version: _Optional[str] = ..., records: _Optional[_Iterable[_Union[VersionRecord, _Mapping]]] = ...) -> None: ...

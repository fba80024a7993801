"""Typed service configuration: one YAML file, overridable by ``PSEUDOSTREAM_*`` variables.

Nested fields use ``__`` in variable names, e.g. ``PSEUDOSTREAM_LABEL_LOG__PATH=/data/labels.db``
or ``PSEUDOSTREAM_PORT=50051``. Environment variables override the file.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pseudostream.server.errors import ConfigError
from pseudostream.server.security import SecurityConfig

__all__ = [
    "TeacherConfig",
    "TritonSettings",
    "PolicyConfig",
    "TopicConfig",
    "DistAlignConfig",
    "ViewsConfig",
    "LabelLogConfig",
    "ServiceConfig",
    "load_config",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TritonSettings(_Strict):
    """Where a Triton-served teacher lives and how the service talks to it."""

    url: str = Field("127.0.0.1:8001", description="Triton's gRPC host:port")
    model: str = Field(description="model name in Triton's repository")
    repository: Path | None = Field(None, description="the repository folder (to publish versions)")
    platform: Literal["python", "onnxruntime_onnx", "tensorrt_plan"] = "onnxruntime_onnx"
    timeout_s: float = Field(10.0, gt=0, description="per-request timeout")
    priority: int = Field(0, ge=0, description="Triton request priority (0: the model's default)")
    retries: int = Field(3, ge=0, description="retries of UNAVAILABLE / queue-full answers")
    backoff_s: float = Field(0.05, gt=0, description="first retry delay, doubled each retry")
    breaker_failures: int = Field(5, ge=1, description="failures in a row that open the breaker")
    breaker_reset_s: float = Field(5.0, gt=0, description="how long the open breaker refuses")
    shared_memory: bool = Field(False, description="pass tensors through system shared memory")
    startup_timeout_s: float = Field(60.0, gt=0)


class TeacherConfig(_Strict):
    """One teacher model and how it is batched."""

    backend: Literal["onnxruntime", "triton"] = "onnxruntime"
    model_dir: Path | None = Field(None, description="onnxruntime: folder with model.onnx and teacher.json")
    triton: TritonSettings | None = Field(None, description="triton: server and model")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0: ORT's default)")
    providers: list[str] | None = Field(None, description="ORT execution providers, best first")
    provider_options: dict[str, dict[str, str | int | float]] = Field(
        default_factory=dict, description="onnxruntime: options per execution provider, as ONNX "
        "Runtime names them, e.g. {CUDAExecutionProvider: {use_tf32: 0, cudnn_conv_algo_search: HEURISTIC}}")
    batch_buckets: Literal["auto", "off", "powers_of_two"] | list[int] = Field(
        "auto", description="onnxruntime: pad each batch up to the next of these sizes and run it on "
        "that size's own session (each warmed up at load), so no session's input shape changes: "
        "ONNX Runtime's CUDA provider redoes its per-shape set-up, cuDNN's algorithm search among "
        "it, whenever it does. auto: powers of two from 8 up to max_batch on a GPU provider, off "
        "on CPU (where padding costs compute in proportion and a new shape costs little)")
    inference_workers: int = Field(1, ge=1, le=64, description="onnxruntime: batches run at once, "
                                   "each with intra_op_threads (on CPU, a small teacher runs "
                                   "fastest with one worker per core and intra_op_threads 1)")
    spin_wait: bool = Field(False, description="onnxruntime: idle intra-op threads busy-wait for "
                            "work (ORT's own default; costs cores the event loop needs)")
    split_min_rows: int = Field(8, ge=0, description="onnxruntime with several inference_workers: "
                                "a batch that finds k >= 2 workers idle runs as k parts at once, each "
                                "of at least this many rows, so a lone batch at low load takes a "
                                "fraction of its time (0: never split)")
    max_batch: int = Field(128, ge=1, description="most samples per inference batch")
    max_delay_ms: float = Field(5.0, ge=0, description="longest wait to fill a batch")
    adaptive_delay: bool = Field(True, description="cut a partial batch at once when the teacher "
                                 "has a free worker, at the arrival rate seen the batch would not fill "
                                 "within max_delay_ms anyway, and the teacher infers a batch in under 4 "
                                 "max delays or its fixed cost per batch (timed in the background from "
                                 "start on batches of 1 and 16, then learned) is less than the wait "
                                 "left (max_delay_ms stays the longest wait)")
    max_queue_samples: int = Field(16384, ge=1, description="samples queued before RESOURCE_EXHAUSTED")
    pipeline_depth: int | None = Field(  # None: the default below; an int once validated
        None, ge=1, le=130, description="batches in flight at once: the next batch's inference "
        "overlaps this one's selection and log append (default: 2 with one inference worker; with "
        "several, 2 x inference_workers + 2: each worker's running batch and one queued behind it, "
        "one labeling, one appending, so no worker waits for a slot to free)")

    @model_validator(mode="after")
    def _backend_has_its_settings(self) -> "TeacherConfig":
        if self.backend == "onnxruntime" and self.model_dir is None:
            raise ValueError("backend onnxruntime needs model_dir (model.onnx + teacher.json)")
        if self.backend == "triton" and self.triton is None:
            raise ValueError("backend triton needs a triton section: {url, model}")
        for name in self.provider_options:
            if not name.endswith("ExecutionProvider"):
                raise ValueError(f"provider_options names {name!r}, not an ONNX Runtime execution "
                                 "provider: use its full name, e.g. CUDAExecutionProvider")
            if self.providers is not None and name not in self.providers:
                raise ValueError(f"provider_options names {name}, which providers {self.providers} "
                                 f"leaves out: add it to providers or drop its options")
        if isinstance(self.batch_buckets, list):
            if not self.batch_buckets or min(self.batch_buckets) < 1:
                raise ValueError(f"batch_buckets {self.batch_buckets}: give batch sizes of 1 or more "
                                 "(or auto, off, powers_of_two)")
            if max(self.batch_buckets) < self.max_batch:
                raise ValueError(f"batch_buckets {self.batch_buckets} stop below max_batch "
                                 f"{self.max_batch}: larger batches would run unpadded, a new shape "
                                 f"each; add {self.max_batch}")
        workers = self.inference_workers
        if self.pipeline_depth is None:
            self.pipeline_depth = 2 if workers == 1 else 2 * workers + 2
        elif self.pipeline_depth <= workers and workers > 1:
            raise ValueError(f"pipeline_depth {self.pipeline_depth} keeps at most that many batches "
                             f"in flight, too few to feed {workers} inference_workers and label at "
                             f"the same time: set pipeline_depth to {2 * workers + 2} (2 x inference_workers "
                             "+ 2), or leave it out for that default; inference_workers + 1 is the least")
        return self


class PolicyConfig(_Strict):
    """A threshold policy by registry name, with its parameters."""

    name: str = "fixed"
    params: dict[str, Any] = Field(default_factory=dict)


class DistAlignConfig(_Strict):
    """ReMixMatch-style distribution alignment in front of the topic's policy."""

    momentum: float = Field(0.999, ge=0, le=1, description="published per-batch EMA momentum")
    momentum_per_sample: float | None = Field(None, ge=0, le=1, description="overrides momentum")
    target: Literal["uniform"] | list[float] = "uniform"


class ViewsConfig(_Strict):
    """K test-time-augmented views per sample (for policies that need them, e.g. UPS).

    View 0 is the sample itself; the others shift it by up to ``max_shift`` pixels along its last
    two axes (zero fill) and add Gaussian noise of ``noise_std``. Costs K-1 extra inferences.
    """

    count: int = Field(4, ge=2, le=64)
    max_shift: int = Field(1, ge=0)
    noise_std: float = Field(0.0, ge=0)
    seed: int = 0


class AuditConfig(_Strict):
    """A topic's audit slice (labelled samples kept server-side, never streamed to trainers) and
    the promotion gate a proposed teacher must pass on it (server/gate.py)."""

    path: Path = Field(description=".npz with x [N, *input_shape] and y [N] (class indices)")
    max_accuracy_drop: float = Field(0.0, ge=-1, le=1, description="a candidate may be at most "
                                     "this much less accurate than the served teacher (negative: "
                                     "it must be at least that much more accurate)")
    max_ece_increase: float = Field(0.02, ge=0, le=1, description="... and at most this much "
                                    "worse calibrated (ECE after each one's temperature refit)")


class EmaConfig(_Strict):
    """Serve an EMA of proposed students: theta_t <- m theta_t + (1 - m) theta_s (server/ema.py)."""

    momentum: float = Field(0.9, ge=0, lt=1)
    every: int = Field(1, ge=1, description="gate and publish the EMA after every N proposals")


class AdapterConfig(_Strict):
    """One output-level test-time adapter (server/adaptation/): prior_em, t3a, lame, feature_shift."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class WeightAdaptConfig(_Strict):
    """Weight-level test-time adaptation of a topic's teacher (server/adaptation/weight_loop.py)."""

    method: Literal["bn_stats", "tent", "eata", "sar"]
    params: dict[str, Any] = Field(default_factory=dict, description="the method's options "
                                   "(models/tta/): lr, optimizer, steps, bn_prior, ...")
    mode: Literal["online", "adapt_then_label"] = "online"
    window: int = Field(256, ge=2, description="online: trusted samples per adaptation update")
    publish_every: int = Field(1, ge=1, description="online: kept windows per published version")
    guard: dict[str, Any] = Field(default_factory=dict, description="collapse guard thresholds "
                                  "(server/adaptation/guard.py), incl. reset_every")
    on_alarm: Literal["reject", "zero_weight"] = Field(
        "reject", description="adapt_then_label: what happens to an alarmed window's labels")
    teacher_dir: Path | None = Field(None, description="folder with the teacher's model.pt "
                                     "(default: the teacher's model_dir)")


class TopicConfig(_Strict):
    """One labeling stream: a teacher, a threshold policy and its label-log topic."""

    teacher: str
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    dist_align: DistAlignConfig | None = None
    views: ViewsConfig | None = None
    idempotency_window_s: float = Field(
        600.0, ge=0, description="a sample id labeled again within this many seconds gets its "
        "first decision back and no second log record (0 disables)")
    audit_label_key: str | None = Field(
        None, description="metadata key carrying a sample's true class index; such samples are "
        "decided and scored for quality but never logged for trainers")
    store_samples: bool = Field(True, description="keep sample tensors in the log for trainers")
    max_sample_bytes: int = Field(1 << 20, ge=1, description="largest accepted sample tensor")
    trusted_producers: list[str] | None = Field(
        None, description="clients (token names, else peer hosts) whose samples may move the "
        "topic's statistics (policy state, and adaptation); others are decided but not learned "
        "from. None: everyone (test-time poisoning is a known attack: list them in production)")
    audit: AuditConfig | None = Field(None, description="audit slice and promotion gate")
    adapters: list[AdapterConfig] = Field(default_factory=list, description="output-level "
                                          "test-time adapters, run in order before selection")
    adapt: WeightAdaptConfig | None = Field(None, description="weight-level test-time adaptation")
    ema: EmaConfig | None = Field(None, description="served teacher = EMA of proposed students")
    nonfinite: Literal["reject", "sanitize"] = Field(
        "reject", description="NaN/Inf in float inputs: reject the request (INVALID_ARGUMENT) "
        "or sanitize (replace them with 0 on a copy and label it)")


SQLITE_PAGE_SIZES = (4096, 8192, 16384, 32768, 65536)


class LabelLogConfig(_Strict):
    """Where accepted labels are kept: an embedded SQLite file (one service process) or Redis
    Streams (shared by service replicas)."""

    kind: Literal["sqlite", "redis"] = "sqlite"
    path: Path = Field(Path("pseudostream-labels.db"), description="sqlite: the database file")
    synchronous: Literal["NORMAL", "FULL"] = Field("NORMAL", description="sqlite durability")
    page_size: int | Literal["auto"] = Field(
        "auto", description="sqlite: bytes per database page of a new file, a power of two from 4096 "
        "to 65536 (an existing file keeps its own); auto: 65536 where a topic stores samples of 8 KiB "
        "or more, else SQLite's 4096 (labellog.factory.page_size_for)")
    url: str = Field("redis://127.0.0.1:6379/0", description="redis: server URL")
    prefix: str = Field("pseudostream", description="redis: key prefix")
    max_len: int | None = Field(None, ge=1, description="retention: records kept per topic "
                                "(redis trims in whole stream nodes, so about this many)")
    max_age_s: float | None = Field(None, gt=0, description="retention: drop records older than this")
    visibility_timeout_s: float = Field(30.0, gt=0)

    @field_validator("page_size")
    @classmethod
    def _page_size(cls, value: int | str) -> int | str:
        if value != "auto" and value not in SQLITE_PAGE_SIZES:
            raise ValueError(f"{value} is no SQLite page size for a label log; use one of "
                             f"{SQLITE_PAGE_SIZES} or auto")
        return value


class ServiceConfig(BaseSettings):
    """The whole service. ``port`` 0 picks a free port; ``metrics_port`` None disables /metrics."""

    model_config = SettingsConfigDict(
        env_prefix="PSEUDOSTREAM_", env_nested_delimiter="__", extra="forbid"
    )

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(9464, ge=0, le=65535)
    max_message_bytes: int = Field(64 << 20, ge=1 << 20)
    max_inflight_per_stream: int = Field(64, ge=1, description="requests in flight on one stream")
    checkpoint_every: int = Field(50, ge=1, description="policy checkpoint every N batches")
    shutdown_grace_s: float = Field(5.0, ge=0)
    replica_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
                            description="this process's name among replicas sharing a label log")
    policy_sync_s: float = Field(5.0, gt=0, description="with a shared (redis) label log: how "
                                 "often replicas merge their policy statistics")
    work_dir: Path = Field(Path(".pseudostream"), description="candidate teachers, EMA "
                           "weights and adapted versions are kept here")
    teachers: dict[str, TeacherConfig] = Field(default_factory=dict)
    topics: dict[str, TopicConfig] = Field(default_factory=dict)
    label_log: LabelLogConfig = Field(default_factory=LabelLogConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    max_request_samples: int = Field(4096, ge=1, description="most samples in one LabelRequest")
    rate_limit_samples_per_s: float | None = Field(
        None, gt=0, description="per-client labeling rate (token bucket); None: unlimited")
    rate_limit_burst: int = Field(4096, ge=1, description="per-client burst, in samples")
    stream_idle_timeout_s: float = Field(300.0, gt=0, description="a Label stream with no request "
                                         "for this long ends with DEADLINE_EXCEEDED")
    keep_freed_memory_mib: int = Field(
        64, ge=0, description="glibc: keep up to this much freed memory per malloc heap for the "
        "next buffer instead of handing it back to the kernel (server/allocator.py; 0: glibc's "
        "defaults; MALLOC_*_THRESHOLD_ or GLIBC_TUNABLES in the environment win)")

    @model_validator(mode="after")
    def _topics_name_known_teachers(self) -> "ServiceConfig":
        for name, topic in self.topics.items():
            if (topic.adapters or topic.adapt) and topic.trusted_producers is None:
                raise ValueError(f"topic {name!r} adapts the teacher but trusts no one: list the "
                                 "producers whose samples may move adapter state in "
                                 "trusted_producers (['*'] trusts every producer)")
            if topic.teacher not in self.teachers:
                known = ", ".join(sorted(self.teachers)) or "(none)"
                raise ValueError(f"topic {name!r} names teacher {topic.teacher!r}; known: {known}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: it overrides what the YAML file (passed as init values) says.
        return env_settings, init_settings


def load_config(path: str | Path | None = None, **overrides: Any) -> ServiceConfig:
    """Read ``path`` (YAML) if given, apply ``overrides`` and the environment, and validate.

    Raises ConfigError with every problem found, each with its field path.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config {path}: expected a mapping at the top level")
    data.update(overrides)
    try:
        return ServiceConfig(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid config: {problems}") from None

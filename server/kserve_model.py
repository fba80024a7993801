"""The labeling service as a KServe custom predictor (the ``[kserve]`` extra).

``PseudoLabelModel`` serves one topic over KServe's Open Inference Protocol v2 (REST and gRPC):

    inputs   <teacher input name>  e.g. "input", FP32 [N, 1, 8, 8] for the demo teacher
             "ids"                 optional BYTES [N]: sample ids (default "<request id>-<i>")
    outputs  accepted BOOL [N], label INT32 [N], confidence FP32 [N], weight FP32 [N],
             threshold FP32 [N], offset INT64 [N] (-1 where rejected), teacher_version BYTES [N]

Inputs are checked by the same code as the native gRPC API (``codec.decode_label_request``), and
domain errors are converted to KServe's at this boundary: InvalidInput reaches clients as HTTP 400
/ gRPC INVALID_ARGUMENT, Overloaded and TeacherUnavailable as 503 / UNAVAILABLE.

Run it as ``python -m pseudostream.server.kserve_model --config service.yaml --topic digits``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _import_kserve() -> Any:
    """Import kserve with two of its import-time side effects contained.

    1. kserve.model_server parses sys.argv when imported (and our --config would match its
       --configure_logging flag): it sees no arguments; main() passes ours explicitly.
    2. kserve's grpc_predict_v2_pb2 and tritonclient's service_pb2 both define the ``inference.*``
       messages, so whichever is imported second fails with "duplicate symbol" in protobuf's
       default pool (kserve/kserve#3099), and the Triton teacher backend could not run here.
       kserve's file goes into a private pool; its message classes work the same.
    """
    from google.protobuf import descriptor_pool

    argv, sys.argv = sys.argv, sys.argv[:1]
    default_pool, private_pool = descriptor_pool.Default, descriptor_pool.DescriptorPool()
    descriptor_pool.Default = lambda: private_pool
    try:
        import kserve
        from kserve import errors
        from kserve.utils.numpy_codec import from_np_dtype
    finally:
        descriptor_pool.Default = default_pool
        sys.argv = argv
    return kserve, errors, from_np_dtype


kserve, kserve_errors, from_np_dtype = _import_kserve()

from pseudostream.proto.v1 import labeler_pb2 as pb  # noqa: E402
from pseudostream.server import codec  # noqa: E402
from pseudostream.server.allocator import keep_freed_memory  # noqa: E402
from pseudostream.server.config import ServiceConfig, load_config  # noqa: E402
from pseudostream.server.core import LabelingCore  # noqa: E402
from pseudostream.server.errors import (  # noqa: E402
    ConfigError, InvalidInput, Overloaded, PseudostreamError, TeacherUnavailable, UnknownName,
)
from pseudostream.server.outcome import LabelOutcome  # noqa: E402

__all__ = ["PseudoLabelModel", "main"]

log = logging.getLogger(__name__)

IDS_INPUT = "ids"
STARTUP_TIMEOUT_S = 120.0


class PseudoLabelModel(kserve.Model):
    """One topic of the labeling service behind KServe's v2 inference protocol.

    ``load()`` checks the config; the LabelingCore itself starts in ``start_engine()``, which
    KServe's ModelServer runs on its own event loop, and stops in ``stop_engine()`` on shutdown.
    """

    def __init__(self, config: ServiceConfig | str | Path, topic: str, name: str | None = None) -> None:
        super().__init__(name or topic)
        self._config_source = config
        self.config: ServiceConfig | None = None
        self.topic = topic
        self.core: LabelingCore | None = None
        self._started: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None

    def load(self) -> bool:
        """Read and check the config (KServe calls this again while the model is not healthy)."""
        if self.config is None:
            source = self._config_source
            config = source if isinstance(source, ServiceConfig) else load_config(source)
            if self.topic not in config.topics:
                known = ", ".join(sorted(config.topics)) or "(none)"
                raise UnknownName(f"unknown topic {self.topic!r}; configured topics: {known}")
            self.config = config
        self.engine = True  # ModelServer then runs start_engine() on its event loop
        self.ready = True   # registration needs it; healthy() also waits for the core
        return self.ready

    def start(self) -> None:
        """Nothing to do: the core starts in ``start_engine``."""

    async def start_engine(self) -> None:
        """Start the LabelingCore, serve until ``stop_engine``, then drain and stop it."""
        if self.config is None:
            self.load()
        self._started, self._stopping = asyncio.Event(), asyncio.Event()
        core = LabelingCore(self.config)
        await core.start()
        self.core = core
        self._started.set()
        log.info("KServe model %s serves topic %s", self.name, self.topic)
        try:
            await self._stopping.wait()
        finally:
            self.core = None
            await core.stop()

    def stop_engine(self) -> None:
        """Ask ``start_engine`` to stop the core (called by ModelServer on SIGTERM / SIGINT)."""
        self.ready = False
        if self._stopping is not None:
            self._stopping.set()

    def stop(self) -> None:
        """Nothing to do: ``stop_engine`` stops the core."""

    async def healthy(self) -> bool:
        """Ready once the LabelingCore has started."""
        return self.ready and self.core is not None and self.core.ready

    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Any:
        """Label a v2 InferRequest; domain errors become KServe's (400 / 503)."""
        core = await self._running_core()
        if not isinstance(payload, kserve.InferRequest):
            raise kserve_errors.InvalidInput("use the v2 protocol (/v2/models/<name>/infer or gRPC "
                                             "ModelInfer); v1 'instances' are not supported")
        try:
            request = self._decode(payload, core)
            outcome = await core.label(request)
        except (InvalidInput, ConfigError, UnknownName) as exc:
            raise kserve_errors.InvalidInput(str(exc)) from exc
        except (Overloaded, TeacherUnavailable) as exc:
            raise kserve_errors.ServerNotReady(str(exc)) from exc
        except PseudostreamError as exc:
            raise kserve_errors.InferenceError(str(exc)) from exc
        return self._encode(payload, request.request_id, outcome)

    async def _running_core(self) -> LabelingCore:
        if self._started is None:
            raise kserve_errors.ServerNotReady("the labeling core has not been started")
        try:
            await asyncio.wait_for(self._started.wait(), STARTUP_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise kserve_errors.ServerNotReady("the labeling core is still starting") from None
        if self.core is None:
            raise kserve_errors.ServerNotReady("the labeling core is shutting down")
        return self.core

    def _decode(self, payload: Any, core: LabelingCore) -> codec.LabelInput:
        topic = core.topic(self.topic)
        teacher = core.backends[topic.config.teacher].metadata
        request_id = payload.id or uuid.uuid4().hex
        sample_shape = ", ".join(map(str, teacher.input_shape))
        expected_type = from_np_dtype(teacher.input_dtype)
        tensor = payload.get_input_by_name(teacher.input_name)
        if tensor is None:
            given = [i.name for i in payload.inputs]
            raise InvalidInput(f"missing input {teacher.input_name!r} ({expected_type} "
                               f"[N, {sample_shape}]); inputs given: {given}")
        if tensor.datatype != expected_type:
            raise InvalidInput(f"input {teacher.input_name!r}: datatype {tensor.datatype} given, "
                               f"teacher {teacher.name} expects {expected_type} [N, {sample_shape}]")
        inputs = _as_numpy(tensor, teacher.input_name)
        n = inputs.shape[0] if inputs.ndim else 0
        ids_tensor = payload.get_input_by_name(IDS_INPUT)
        if ids_tensor is None:
            ids = [f"{request_id}-{i}" for i in range(n)]
        else:
            ids = _decode_ids(ids_tensor, n)
        message = pb.LabelRequest(topic=self.topic, request_id=request_id, ids=ids,
                                  inputs=codec.encode_tensor(inputs))
        return codec.decode_label_request(message, teacher, topic.config.max_sample_bytes,
                                          topic.config.audit_label_key)

    def _encode(self, payload: Any, request_id: str, outcome: LabelOutcome) -> Any:
        d = outcome.decisions
        columns = {
            "accepted": d.accept.astype(bool),
            "label": d.label.astype(np.int32),
            "confidence": d.confidence.astype(np.float32),
            "weight": d.weight.astype(np.float32),
            "threshold": d.threshold.astype(np.float32),
            "offset": outcome.offsets.astype(np.int64),
            "teacher_version": np.array([str(v).encode() for v in outcome.teacher_version],
                                        dtype=np.object_),
        }
        binary = payload.use_binary_outputs
        outputs = []
        for name, column in columns.items():
            out = kserve.InferOutput(name, list(column.shape), from_np_dtype(column.dtype))
            out.set_data_from_numpy(column, binary_data=binary)
            outputs.append(out)
        return kserve.InferResponse(request_id, self.name, outputs, use_binary_outputs=binary)


def _as_numpy(tensor: Any, what: str) -> np.ndarray:
    try:
        return tensor.as_numpy()
    except (ValueError, TypeError) as exc:  # the data does not fill the declared shape
        raise InvalidInput(f"input {what!r}: data does not match shape {list(tensor.shape)} "
                           f"of {tensor.datatype}: {exc}") from None


def _decode_ids(tensor: Any, n: int) -> list[str]:
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {IDS_INPUT!r}: datatype {tensor.datatype} given, expected BYTES [N]")
    values = _as_numpy(tensor, IDS_INPUT).reshape(-1)
    if values.shape[0] != n:
        raise InvalidInput(f"input {IDS_INPUT!r}: {values.shape[0]} ids for {n} samples; "
                           "send one id per sample, or none")
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
    except UnicodeDecodeError:
        raise InvalidInput(f"input {IDS_INPUT!r}: ids must be UTF-8") from None


def main(argv: Sequence[str] | None = None) -> None:
    """Serve one topic with KServe's ModelServer (HTTP v2 on --http-port, gRPC on --grpc-port)."""
    parser = argparse.ArgumentParser(prog="python -m pseudostream.server.kserve_model",
                                     description=main.__doc__, allow_abbrev=False)
    parser.add_argument("--config", required=True, help="service config YAML")
    parser.add_argument("--topic", required=True, help="the topic to serve")
    parser.add_argument("--model-name", default=None, help="KServe model name (default: the topic)")
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--grpc-port", type=int, default=8081)
    args = parser.parse_args(argv)
    model = PseudoLabelModel(args.config, args.topic, name=args.model_name)
    try:
        model.load()
    except PseudostreamError as exc:
        parser.exit(2, f"error: {exc}\n")
    assert model.config is not None
    log.info("allocator: %s", keep_freed_memory(model.config.keep_freed_memory_mib << 20))  # as `serve` does
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port).start([model])


if __name__ == "__main__":
    main()

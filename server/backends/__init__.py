"""Teacher backends: where the teacher model runs."""

from __future__ import annotations

from pseudostream.server.backends.base import BACKENDS, TeacherBackend, TeacherMetadata, TeacherOutput
from pseudostream.server.config import TeacherConfig

__all__ = ["BACKENDS", "TeacherBackend", "TeacherMetadata", "TeacherOutput", "make_backend"]


def make_backend(config: TeacherConfig) -> TeacherBackend:
    """Build the backend ``config.backend`` names (imported on demand: extras stay optional)."""
    if config.backend == "onnxruntime":
        from pseudostream.server.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(
            config.model_dir,
            intra_op_threads=config.intra_op_threads,
            providers=config.providers,
            workers=config.inference_workers,
            spin=config.spin_wait,
            split_min_rows=config.split_min_rows,
            max_batch=config.max_batch,
            batch_buckets=config.batch_buckets,
            provider_options=config.provider_options,
        )
    if config.backend == "triton":
        from pseudostream.server.backends.triton import TritonBackend  # the [triton] extra

        return TritonBackend(config)
    return BACKENDS.get(config.backend)(config)  # raises listing the known names

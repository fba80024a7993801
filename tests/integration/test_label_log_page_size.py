"""The service picks the SQLite label log's page size from what its topics store: 64 KiB pages
where a topic stores samples of 8 KiB or more (a 3x32x32 float32 image is 12 KiB), else SQLite's
4 KiB; a configured size wins, and an existing file keeps its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pseudostream.models.pooling_teacher import build_pooling_teacher
from pseudostream.server.codec import LabelInput
from pseudostream.server.core import LabelingCore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def image_teacher(tmp_path_factory) -> Path:
    """A teacher of 3x32x32 float32 inputs: average pooling, then a 3-to-10 linear layer."""
    return build_pooling_teacher(tmp_path_factory.mktemp("image-teacher"), (3, 32, 32), name="image")


async def label_and_stop(config, topic: str, x: np.ndarray) -> None:
    core = LabelingCore(config)
    await core.start()
    try:
        outcome = await core.label(LabelInput(topic, [f"s{k}" for k in range(len(x))], x, None, "r1"))
        assert outcome.decisions.accept.all()  # tau 0: every label and sample is in the log
        [record] = await core.log.get(topic, [int(outcome.offsets[1])])
        np.testing.assert_array_equal(record.sample_array(), x[1])
    finally:
        await core.stop()


def image_config(make_config, image_teacher: Path, **label_log):
    return make_config(
        teachers={"image": {"model_dir": image_teacher, "max_batch": 8}},
        topics={"images": {"teacher": "image", "policy": {"name": "fixed", "params": {"tau": 0.0}}}},
        label_log=label_log)


async def test_large_samples_get_64_kib_pages_small_ones_4_kib(make_config, image_teacher, digits, tmp_path,
                                                                sqlite_page_size):
    images = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    await label_and_stop(image_config(make_config, image_teacher, path=tmp_path / "images.db"), "images", images)
    assert sqlite_page_size(tmp_path / "images.db") == 65536
    digits_config = make_config(label_log={"path": tmp_path / "digits.db"},
                                topics={"digits": {"policy": {"name": "fixed", "params": {"tau": 0.0}}}})
    await label_and_stop(digits_config, "digits", np.ascontiguousarray(digits.stream_x[:4]))
    assert sqlite_page_size(tmp_path / "digits.db") == 4096


async def test_large_samples_not_stored_or_a_configured_size_keep_theirs(make_config, image_teacher, tmp_path,
                                                                         sqlite_page_size):
    images = np.random.default_rng(1).random((4, 3, 32, 32), dtype=np.float32)
    config = image_config(make_config, image_teacher, path=tmp_path / "bare.db")
    config.topics["images"].store_samples = False
    core = LabelingCore(config)
    await core.start()
    await core.stop()
    assert sqlite_page_size(tmp_path / "bare.db") == 4096
    await label_and_stop(image_config(make_config, image_teacher, path=tmp_path / "set.db", page_size=16384),
                         "images", images)
    assert sqlite_page_size(tmp_path / "set.db") == 16384
    # The file made with 16 KiB pages keeps them under auto, its records readable.
    await label_and_stop(image_config(make_config, image_teacher, path=tmp_path / "set.db"), "images", images)
    assert sqlite_page_size(tmp_path / "set.db") == 16384

"""Config: YAML file, environment overrides, and errors that name the field."""

from __future__ import annotations

import pytest

from pseudostream.server.config import load_config
from pseudostream.server.errors import ConfigError
from pseudostream.server.labellog.factory import page_size_for

YAML = """
port: 0
teachers:
  digits-cnn: {model_dir: /models/digits, max_batch: 32}
topics:
  digits: {teacher: digits-cnn, policy: {name: fixed, params: {tau: 0.9}}}
label_log: {path: /data/labels.db}
"""


def test_yaml_with_environment_overrides(tmp_path, monkeypatch):
    path = tmp_path / "service.yaml"
    path.write_text(YAML)
    monkeypatch.setenv("PSEUDOSTREAM_LABEL_LOG__VISIBILITY_TIMEOUT_S", "7.5")
    monkeypatch.setenv("PSEUDOSTREAM_PORT", "6000")
    cfg = load_config(path)
    assert cfg.port == 6000
    assert cfg.label_log.visibility_timeout_s == 7.5 and str(cfg.label_log.path) == "/data/labels.db"
    assert cfg.teachers["digits-cnn"].max_batch == 32
    assert cfg.topics["digits"].policy.params == {"tau": 0.9}


def test_label_log_page_size_from_the_environment_and_its_error(tmp_path, monkeypatch):
    path = tmp_path / "service.yaml"
    path.write_text(YAML)
    config = load_config(path).label_log
    assert config.page_size == "auto"
    assert (page_size_for(config, 256), page_size_for(config, 12288)) == (4096, 65536)
    monkeypatch.setenv("PSEUDOSTREAM_LABEL_LOG__PAGE_SIZE", "16384")
    config = load_config(path).label_log
    assert config.page_size == 16384
    assert (page_size_for(config, 256), page_size_for(config, 12288)) == (16384, 16384)
    monkeypatch.setenv("PSEUDOSTREAM_LABEL_LOG__PAGE_SIZE", "10000")
    with pytest.raises(ConfigError, match=r"label_log.page_size: .*10000 is no SQLite page size .* use one of "
                                          r"\(4096, 8192, 16384, 32768, 65536\) or auto"):
        load_config(path)


def test_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"teachers.t.max_batch: Input should be greater"):
        load_config(teachers={"t": {"model_dir": "/m", "max_batch": 0}})
    with pytest.raises(ConfigError, match="names teacher 'missing'; known: t"):
        load_config(teachers={"t": {"model_dir": "/m"}}, topics={"d": {"teacher": "missing"}})
    with pytest.raises(ConfigError, match="Extra inputs are not permitted"):
        load_config(topics={}, bogus=1)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)


def test_inference_workers_need_a_deep_enough_pipeline():
    with pytest.raises(ConfigError, match="set pipeline_depth to 6 \\(2 x inference_workers \\+ 2\\)"):
        load_config(teachers={"t": {"model_dir": "/m", "inference_workers": 2, "pipeline_depth": 2}})
    cfg = load_config(teachers={"t": {"model_dir": "/m", "inference_workers": 2, "pipeline_depth": 3}})
    assert cfg.teachers["t"].inference_workers == 2 and cfg.teachers["t"].spin_wait is False
    assert cfg.teachers["t"].pipeline_depth == 3


@pytest.mark.parametrize("workers, depth", [(1, 2), (2, 6), (16, 34), (64, 130)])
def test_pipeline_depth_defaults_to_a_queued_batch_per_worker(workers, depth):
    """Left out, the depth is 2 for one worker; with several, each worker's running batch and one
    queued behind it, one labeling and one appending."""
    cfg = load_config(teachers={"t": {"model_dir": "/m", "inference_workers": workers}})
    assert cfg.teachers["t"].pipeline_depth == depth
    explicit = load_config(teachers={"t": {"model_dir": "/m", "inference_workers": workers, "pipeline_depth": depth}})
    assert explicit.teachers["t"].pipeline_depth == depth  # the default is within the field's bounds


def test_batch_buckets_and_provider_options_are_checked():
    def teacher(**fields):
        return load_config(teachers={"t": {"model_dir": "/m", "max_batch": 64, **fields}}).teachers["t"]

    assert teacher().batch_buckets == "auto" and teacher().provider_options == {}
    assert teacher(batch_buckets=[8, 64]).batch_buckets == [8, 64]
    with pytest.raises(ConfigError, match="stop below max_batch 64: .* add 64"):
        teacher(batch_buckets=[8, 32])
    with pytest.raises(ConfigError, match="give batch sizes of 1 or more"):
        teacher(batch_buckets=[0, 64])
    with pytest.raises(ConfigError, match="Input should be 'auto', 'off' or 'powers_of_two'"):
        teacher(batch_buckets="pow2")
    options = {"CUDAExecutionProvider": {"use_tf32": 0, "cudnn_conv_algo_search": "HEURISTIC"}}
    assert teacher(provider_options=options).provider_options == options
    with pytest.raises(ConfigError, match="'CUDA', not an ONNX Runtime execution provider"):
        teacher(provider_options={"CUDA": {"use_tf32": 0}})
    with pytest.raises(ConfigError, match="which providers \\['CPUExecutionProvider'\\] leaves out"):
        teacher(providers=["CPUExecutionProvider"], provider_options=options)

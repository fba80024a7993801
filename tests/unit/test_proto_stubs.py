"""The committed gRPC stubs are what the .proto generates today."""

from __future__ import annotations

from pathlib import Path

from pseudostream.proto import gen


def test_committed_stubs_are_current(tmp_path: Path):
    fresh = gen.generate(tmp_path)
    assert fresh, "protoc wrote nothing"
    for path in fresh:
        committed = gen.OUT / path.name
        assert committed.read_text() == path.read_text(), (
            f"{committed} is stale: run `make proto` and commit the result")

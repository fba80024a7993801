"""Regenerate the Python stubs from ``proto/pseudostream/v1/*.proto`` into ``proto/v1/``.

Run ``python -m pseudostream.proto.gen`` (needs the dev extra: grpcio-tools). The stubs are
committed; ``tests/unit/test_proto_stubs.py`` fails when they are out of date.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = sorted((HERE / "pseudostream" / "v1").glob("*.proto"))
OUT = HERE / "v1"


def generate(out_dir: Path = OUT) -> list[Path]:
    """Run protoc (from grpcio-tools) and write the stubs into ``out_dir``; returns the files."""
    from grpc_tools import protoc  # dev-only dependency

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{HERE}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(s) for s in SOURCES],
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        written = []
        for src in sorted((Path(tmp) / "pseudostream" / "v1").iterdir()):
            text = src.read_text()
            # protoc writes imports for the proto package path (pseudostream.v1); our stubs
            # live at pseudostream.proto.v1.
            text = re.sub(r"^from pseudostream\.v1 import", "from pseudostream.proto.v1 import",
                          text, flags=re.M)
            dst = out_dir / src.name
            dst.write_text(text)
            written.append(dst)
    return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(path)

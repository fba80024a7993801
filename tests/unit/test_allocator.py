"""server/allocator.py: glibc keeps freed memory for the next buffer instead of handing it back
to the kernel, which a service otherwise pays for in page faults on every large buffer."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from pseudostream.server.allocator import keep_freed_memory
from pseudostream.server.config import ServiceConfig

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# Buffers of 3 to 4 MB made and freed in turn, as a delivery's blob, protobuf and message are:
# prints the minor page faults per round.
_ROUNDS = """
import resource, sys
import numpy as np
from pseudostream.server.allocator import keep_freed_memory
if sys.argv[1] != "0":
    print(keep_freed_memory(int(sys.argv[1])), file=sys.stderr)
src = np.ones(3 << 18, np.float32)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for warm in (True, False):
    before = faults()
    for _ in range(50):
        a = src.tobytes()
        b = np.frombuffer(a, np.float32) * 2
        c = b.tobytes() + a[:1 << 20]
        del a, b, c
print((faults() - before) / 50)
"""


def faults_per_round(keep_bytes: int) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    done = subprocess.run([sys.executable, "-c", _ROUNDS, str(keep_bytes)], capture_output=True, text=True,
                          env=env, check=True, timeout=120)
    return float(done.stdout.split()[-1]), done.stderr


@glibc
def test_kept_freed_memory_spares_the_page_faults_of_large_buffers():
    default, _ = faults_per_round(0)
    kept, said = faults_per_round(64 << 20)
    assert "freed memory kept up to 64 MiB a heap; blocks under 32 MiB from the heaps" in said
    # 10 MB a round touched fresh: about 2,600 faults of 4 KiB pages with glibc's defaults.
    assert default > 1000, default
    assert kept * 10 < default, (kept, default)


def test_zero_leaves_the_defaults():
    assert keep_freed_memory(0) == "glibc's defaults kept (keep_freed_memory_mib: 0)"


@pytest.mark.parametrize("name", ["MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"])
def test_the_environment_wins(monkeypatch, name):
    monkeypatch.setenv(name, "1048576")
    assert keep_freed_memory(64 << 20) == f"left to the environment ({name})"


def test_the_service_keeps_64_mib_unless_told_otherwise(monkeypatch):
    assert ServiceConfig().keep_freed_memory_mib == 64
    with pytest.raises(ValueError, match="keep_freed_memory_mib"):
        ServiceConfig(keep_freed_memory_mib=-1)
    monkeypatch.setenv("PSEUDOSTREAM_KEEP_FREED_MEMORY_MIB", "0")
    assert ServiceConfig().keep_freed_memory_mib == 0

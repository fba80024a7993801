"""The curated public surface: every name in __all__ exists, and importing the light packages
does not pull in heavy dependencies."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = ["pseudostream", "pseudostream.server", "pseudostream.clients", "pseudostream.models",
            "pseudostream.server.selection", "pseudostream.server.labellog",
            "pseudostream.server.backends", "pseudostream.server.adaptation", "pseudostream.proto.v1"]


@pytest.mark.parametrize("name", PACKAGES)
def test_every_exported_name_exists(name):
    module = importlib.import_module(name)
    assert module.__all__, f"{name} has an empty __all__"
    for attr in module.__all__:
        assert getattr(module, attr) is not None, f"{name}.{attr}"


def test_server_and_clients_import_without_torch():
    code = ("import sys, pseudostream.server, pseudostream.clients, pseudostream.models; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

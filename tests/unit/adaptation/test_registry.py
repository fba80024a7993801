"""The adapter registry and public surface."""

from __future__ import annotations

import pytest

import pseudostream.server.adaptation as adaptation
from pseudostream.server.errors import ConfigError


def test_registry_names_and_exports():
    assert adaptation.ADAPTERS.names() == ["feature_shift", "lame", "prior_em", "t3a"]
    for name in adaptation.__all__:
        assert getattr(adaptation, name) is not None
    with pytest.raises(ConfigError, match="known: feature_shift, lame, prior_em, t3a"):
        adaptation.ADAPTERS.get("tent")

"""Every policy builds from its config name; unknown names and parameters fail clearly."""

import pytest

import pseudostream.server.selection as selection
from pseudostream.server.errors import ConfigError
from pseudostream.server.selection import POLICIES, ThresholdPolicy, make_policy

NAMES = [
    "fixed",
    "flexmatch",
    "freematch",
    "softmatch",
    "curriculum",
    "debiaspl",
    "adsh",
    "confident",
    "uncertainty",
    "multilabel",
]


@pytest.mark.parametrize("name", NAMES)
def test_builds_by_name(name):
    policy = make_policy(name, 5, {})
    assert isinstance(policy, ThresholdPolicy)
    assert policy.name == name
    assert policy.thresholds().shape == (5,)


def test_registry_holds_exactly_the_policies():
    assert POLICIES.names() == sorted(NAMES)


def test_unknown_name_lists_known():
    with pytest.raises(ConfigError, match="known: adsh, confident, curriculum"):
        make_policy("nope", 3)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("freematch", {"momentum": 1.5}),
        ("freematch", {"mommentum": 0.9}),
        ("flexmatch", {"mapping": "concave"}),
        ("curriculum", {"step_percent": 0}),
        ("softmatch", {"n_sigma": 0}),
        ("adsh", {"window": 0}),
    ],
)
def test_bad_parameters_raise_config_error(name, params):
    with pytest.raises(ConfigError):
        make_policy(name, 3, params)


def test_public_surface():
    for name in selection.__all__:
        assert hasattr(selection, name), name

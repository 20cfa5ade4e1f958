"""Name registries: duplicate rejection, unknown names with valid names and hints."""

from __future__ import annotations

import pytest

from nlptransfer.errors import ConfigError, UnknownNameError
from nlptransfer.registry import Registry, closest_hint
from nlptransfer.strategies import STRATEGIES, get_strategy


def _registry() -> Registry[int]:
    registry: Registry[int] = Registry("widget")
    registry.register("alpha")(1)
    registry.register("beta")(2)
    registry.register("gamma-ray")(3)
    return registry


def test_register_and_get() -> None:
    registry = _registry()
    assert registry.get("beta") == 2
    assert registry.names() == ["alpha", "beta", "gamma-ray"]
    assert list(registry) == ["alpha", "beta", "gamma-ray"]
    assert "alpha" in registry and "delta" not in registry


def test_register_is_a_decorator_returning_the_object() -> None:
    registry: Registry[type] = Registry("thing")

    @registry.register("mine")
    class Mine:
        pass

    assert Mine.__name__ == "Mine"
    assert registry.get("mine") is Mine


def test_duplicate_registration_raises() -> None:
    registry = _registry()
    with pytest.raises(ValueError, match="widget 'beta' is already registered"):
        registry.register("beta")(99)
    assert registry.get("beta") == 2  # the first registration is kept


def test_unknown_name_lists_valid_names_and_suggests() -> None:
    with pytest.raises(UnknownNameError) as info:
        _registry().get("gamma_ray")
    message = str(info.value)
    assert "Unknown widget 'gamma_ray'" in message
    assert "Valid widget names: alpha, beta, gamma-ray." in message
    assert message.endswith("Did you mean 'gamma-ray'?")
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


def test_unknown_name_without_close_match_has_no_hint() -> None:
    with pytest.raises(UnknownNameError) as info:
        _registry().get("zzzz")
    assert "Valid widget names: alpha, beta, gamma-ray." in str(info.value)
    assert "Did you mean" not in str(info.value)


def test_closest_hint() -> None:
    assert closest_hint("bta", ["alpha", "beta"]) == " Did you mean 'beta'?"
    assert closest_hint("qqq", ["alpha", "beta"]) == ""
    assert closest_hint("x", []) == ""


def test_get_strategy_suggests_finetune() -> None:
    with pytest.raises(UnknownNameError) as info:
        get_strategy("finetun")
    message = str(info.value)
    assert "Unknown strategy 'finetun'" in message
    assert "Did you mean 'finetune'?" in message
    for name in STRATEGIES.names():
        assert name in message
    assert {"feature-extraction", "finetune"} <= set(STRATEGIES.names())


def test_get_strategy_known_names() -> None:
    assert get_strategy("finetune").name == "finetune"
    assert get_strategy("feature-extraction").name == "feature-extraction"

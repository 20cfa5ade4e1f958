"""Model cards (README.md in the Hugging Face format) and ``--push_to_hub``."""

from __future__ import annotations

import dataclasses
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nlptransfer.backbones import is_word_vector_source
from nlptransfer.backbones.sources import SHORT_NAMES
from nlptransfer.config import TrainingOptions
from nlptransfer.errors import NLPTransferError

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
# Never uploaded: resumable state and raw logs stay on the training machine.
HUB_IGNORE = ["checkpoints/*", "logs/*", ".*"]


class PushToHubError(NLPTransferError, OSError):
    """The model was saved, but uploading it to the Hugging Face Hub failed."""


@dataclass
class CardInfo:
    """What a model card says; the recipe that trained the model fills it in."""

    title: str
    summary: str
    base_model: str
    pipeline_tag: str
    results: dict[str, dict[str, float]]  # split -> metric -> value
    details: dict[str, Any]  # "Training" section: name -> value
    command: str
    usage: str
    tags: list[str] = field(default_factory=list)
    dataset: str | None = None
    sections: dict[str, str] = field(default_factory=dict)  # extra "## title" -> markdown
    versions: dict[str, str] = field(default_factory=dict)


def hub_id_of(model: str) -> str | None:
    """The hub id of a source model, or None for a local folder (not a valid ``base_model``)."""
    if model in SHORT_NAMES:
        return SHORT_NAMES[model].hub_id
    if is_word_vector_source(model):
        return None
    if Path(model).expanduser().exists() or ":" in model or model.startswith((".", "/", "~")):
        return None
    return model


def command_line(config: TrainingOptions, recipe: str) -> str:
    """The command that reruns ``config``: the recipe plus every option that is not the default."""
    parts = ["accelerate", "launch", recipe]
    defaults = type(config)()
    for f in dataclasses.fields(config):
        value, default = getattr(config, f.name), getattr(defaults, f.name)
        if value == default or f.name in ("resume_from_checkpoint", "overwrite_output_dir", "push_to_hub"):
            continue
        if isinstance(value, bool):
            parts.append(f"--{f.name}" if value else f"--no-{f.name}")
        elif isinstance(value, list):
            parts += [f"--{f.name}", *map(str, value)]
        elif value is not None:
            parts += [f"--{f.name}", str(value)]
    return shlex.join(parts)


def run_details(results: dict[str, Any]) -> dict[str, str]:
    """The model card's lines on the machine, the run's wall time and memory, and the commit."""
    machine = results["hardware"]
    hardware_line = f"{machine['device']}, {machine['num_processes']} process(es)"
    if machine.get("cpu_count"):
        memory = f", {machine['memory_gb']:g} GB RAM" if machine.get("memory_gb") else ""
        hardware_line += f"; {machine['cpu_count']} × {machine.get('cpu', 'CPU')}{memory}"
    if machine.get("load_average_1min") is not None:
        hardware_line += f"; load average {machine['load_average_1min']:g} (1 min) at the end"
    details = {"Hardware": hardware_line}
    if results.get("wall_seconds") is not None:
        rss = results.get("peak_rss_mb")
        memory = f", peak RSS {rss:,.0f} MB" if rss is not None else ""
        details["Wall time"] = (
            f"{results['wall_seconds']:.0f} s from the {results['wall_clock_from']}{memory}"
        )
    source = results.get("source")
    if source:
        edited = f" with uncommitted changes to {', '.join(source['modified'])}" if source["modified"] else ""
        details["Source"] = f"nlptransfer commit `{source['commit'][:12]}`{edited}"
    return details


def build_card(
    config: Any, run: dict[str, Any], out: Path, recipe: str, *, summary: str, pipeline_tag: str,
    details: dict[str, Any], usage: str, **fields: Any,
) -> CardInfo:  # fmt: skip
    """The card of a finished run (``run``: its results.json): what every run's card says (title,
    base model, optimisation, training time, machine, commit, the command that reruns it, versions),
    plus the run's own
    ``summary``, ``details``, ``usage`` and any other :class:`CardInfo` ``fields``."""
    optimisation = (
        f"AdamW, batch size {config.batch_size}, {config.lr_scheduler} schedule, "
        f"warmup {config.warmup:g}, seed {config.seed}"
    )
    details = {**details, "Optimisation": optimisation, "Training time": f"{run['train_seconds']:.0f} s"}
    return CardInfo(
        title=out.name, summary=summary, base_model=config.model, pipeline_tag=pipeline_tag,
        details={**details, **run_details(run)}, command=command_line(config, recipe), usage=usage,
        versions=run["versions"], **fields,
    )  # fmt: skip


def render_card(info: CardInfo) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        library_name="nlptransfer",
        base_model=hub_id_of(info.base_model),
        pipeline_tag=info.pipeline_tag,
        tags=["nlptransfer", "transfer-learning", *info.tags],
        datasets=[info.dataset] if info.dataset and "/" in info.dataset else None,
        model_name=info.title,
    )
    lines = [f"---\n{data.to_yaml()}\n---", f"# {info.title}", "", info.summary, ""]
    if info.results:
        metrics = sorted({m for scores in info.results.values() for m in scores})
        lines += ["## Results", "", "| split | " + " | ".join(metrics) + " |"]
        lines.append("|---" * (len(metrics) + 1) + "|")
        for split, scores in info.results.items():
            lines.append(f"| {split} | " + " | ".join(_fmt(scores.get(m)) for m in metrics) + " |")
        lines.append("")
    lines += ["## Training", ""] + [f"- **{k}**: {v}" for k, v in info.details.items()] + [""]
    for title, body in info.sections.items():
        lines += [f"## {title}", "", body.rstrip(), ""]
    lines += ["## How to use", "", "```python", info.usage.rstrip(), "```", ""]
    lines += ["## Reproduce", "", "```bash", info.command, "```", ""]
    if info.versions:
        lines += ["## Framework versions", ""] + [f"- {k} {v}" for k, v in info.versions.items()] + [""]
    return "\n".join(lines)


def write_card(output_dir: Path, info: CardInfo) -> Path:
    path = Path(output_dir) / CARD_NAME
    tmp = path.with_name(f".{CARD_NAME}.tmp")
    try:
        tmp.write_text(render_card(info))
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return path


def push_to_hub(output_dir: Path, repo_id: str | None) -> str:
    """Upload the model folder (not its checkpoints) to the hub; return the repository id."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        name = repo_id or Path(output_dir).resolve().name
        if "/" not in name:
            name = f"{api.whoami()['name']}/{name}"
        api.create_repo(name, exist_ok=True)
        api.upload_folder(
            folder_path=str(output_dir), repo_id=name, ignore_patterns=HUB_IGNORE,
            commit_message="Upload model trained with nlptransfer",
        )  # fmt: skip
    except Exception as err:  # network, auth and hub errors all end the same way for the user
        raise PushToHubError(
            f"The model is saved in {output_dir}, but pushing it to the Hugging Face Hub failed: {err}. "
            "Log in with `hf auth login` (or set HF_TOKEN), check --hub_model_id, and retry "
            f"with `hf upload {repo_id or '<user>/<name>'} {output_dir}`."
        ) from err
    logger.info("pushed %s to https://huggingface.co/%s", output_dir, name)
    return name


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


__all__ = [
    "CardInfo", "PushToHubError", "command_line", "push_to_hub", "render_card", "run_details", "write_card"
]  # fmt: skip

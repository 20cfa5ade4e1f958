"""Hugging Face image models as a :class:`Backbone`.

Anything ``AutoModel`` loads without a head and feeds ``pixel_values``:
ResNet, ConvNeXt, MobileNet v1/v2, EfficientNet, RegNet, ViT, DeiT, BEiT, Swin,
DINOv2, YOLOS (a ViT detector, used here as a feature backbone), ... The
folder's image processor decides the input size and normalisation; a folder
without one (a model built from a config) gets the config's ``image_size`` (else
224) and ImageNet's mean and std, with a warning.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoImageProcessor, AutoModel, PretrainedConfig

from nlptransfer.backbones.base import BACKBONES
from nlptransfer.backbones.hf_base import (
    HFBackbone,
    HFSource,
    load_hf_config,
    load_hf_weights,
    rebuild_hf_model,
)
from nlptransfer.backbones.vision import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageBackbone,
    ImageOptions,
    PixelSpec,
    options_from_config,
)
from nlptransfer.errors import ConfigError, ModelLoadError

logger = logging.getLogger(__name__)


@BACKBONES.register("hf-image")
class HFVisionBackbone(HFBackbone, ImageBackbone):
    """Any Hugging Face image model without its classification head."""

    registry_name = "hf-image"

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        config: PretrainedConfig,
        source: str = "",
        options: ImageOptions | None = None,
    ) -> None:
        super().__init__()
        if int(getattr(config, "num_channels", 3)) != 3:
            raise ConfigError(
                f"'{source}' expects {config.num_channels}-channel images; nlptransfer feeds RGB "
                "(grayscale images are converted to 3 channels). Use a 3-channel model."
            )
        self.model = model
        self.processor = _quiet_processor(processor)
        self.hf_config = config
        self.source = source
        self._setup_pixels(_pixel_spec(processor), options or ImageOptions())
        self._probe()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        trust_remote_code: bool = False,
        from_scratch: bool = False,
        options: ImageOptions | None = None,
    ) -> HFVisionBackbone:
        """Load from a hub id or a local folder; ``from_scratch`` keeps the architecture only."""
        source = load_hf_config(name_or_path, trust_remote_code)
        return cls.from_source(source, from_scratch, options)

    @classmethod
    def from_source(
        cls, source: HFSource, from_scratch: bool = False, options: ImageOptions | None = None
    ) -> HFVisionBackbone:
        """The model a loaded config describes; ``from_scratch`` keeps its architecture only."""
        processor = _load_processor(source.path, source.config, source.kwargs)
        model = load_hf_weights(source, AutoModel, from_scratch)
        backbone = cls(model, processor, source.config, source=source.name, options=options)
        backbone.trust_remote_code = bool(source.kwargs.get("trust_remote_code", False))
        return backbone

    # ---- what the probe found ------------------------------------------------------------
    def _probe(self) -> None:
        """Run one blank image through the model: output widths, and modules that never contribute.

        A module whose parameters get no gradient from the hidden states (a ViT pooler,
        ConvNeXt's pooled-output norm) would break DistributedDataParallel once the body
        trains; it becomes an identity, as the text backbone drops BERT's pooler.
        """
        height, width = self.input_size
        was_training = self.model.training
        self.model.eval()
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        pixels = torch.zeros(1, 3, height, width)
        with torch.enable_grad():
            out = self.model(pixel_values=pixels, output_hidden_states=True)
            states = [out.last_hidden_state, *(out.hidden_states or ())]
            total = sum(s.float().sum() for s in states)
            grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True) if named else []
        unused = {name for (name, _), grad in zip(named, grads, strict=True) if grad is None}
        for child, module in list(self.model.named_children()):
            names = [f"{child}.{n}" for n, _ in module.named_parameters()]
            if names and all(n in unused for n in names):
                logger.debug("dropping %s: it feeds only the model's own pooled output", child)
                setattr(self.model, child, nn.Identity())
        self.model.train(was_training)
        self.hidden_size = _width(out.last_hidden_state)
        self._widths = [_width(s) for s in (out.hidden_states or (out.last_hidden_state,))]

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the processed images."""
        probe = self.resize([np.zeros((64, 64, 3), dtype=np.uint8)])[0]
        return int(probe.shape[-2]), int(probe.shape[-1])

    def num_hidden_states(self) -> int:
        return len(self._widths)

    def state_width(self, index: int) -> int:
        return self._widths[index]

    @property
    def uniform_hidden_states(self) -> bool:
        return len(set(self._widths)) == 1

    # ---- pixels --------------------------------------------------------------------------
    def resize(self, images: list[np.ndarray]) -> list[np.ndarray]:
        out = self.processor(images, do_rescale=False, do_normalize=False, return_tensors="np")
        values = np.asarray(out["pixel_values"])
        if values.dtype != np.uint8:
            values = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return list(values)

    def feature_maps(
        self, pixel_values: torch.Tensor, output_hidden_states: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        out = self.model(pixel_values=pixel_values, output_hidden_states=output_hidden_states)
        return out.last_hidden_state, (out.hidden_states if output_hidden_states else None)

    # ---- save / load ---------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.image_config()}

    def save(self, directory: Path) -> None:
        self.hf_config.save_pretrained(directory)
        self.processor.save_pretrained(directory)

    def export_pretrained(self, directory: str | Path) -> None:
        """Write a plain Hugging Face folder (config, weights, image processor) of the body.

        ``AutoModel.from_pretrained`` and ``--model`` load it like any hub model.
        """
        if hasattr(self.model, "peft_config"):
            raise ConfigError("Merge the adapter (TransferModel.merge_adapter) before exporting the body.")
        self.model.save_pretrained(directory)
        self.processor.save_pretrained(directory)

    @classmethod
    def from_saved(cls, directory: Path, config: dict[str, Any]) -> HFVisionBackbone:
        remote = bool(config.get("trust_remote_code", False))
        hf_config, model = rebuild_hf_model(directory, remote)
        processor = _load_processor(str(directory), hf_config, {"trust_remote_code": remote})
        backbone = cls(model, processor, hf_config, config.get("source", ""), options_from_config(config))
        backbone.trust_remote_code = remote
        return backbone


def _width(state: torch.Tensor) -> int:
    return int(state.shape[1] if state.ndim == 4 else state.shape[-1])


def _backend() -> dict[str, str]:
    # Without torchvision transformers falls back to its PIL processors, warning each time.
    return {} if importlib.util.find_spec("torchvision") else {"backend": "pil"}


def _load_processor(path: str, config: PretrainedConfig, kwargs: dict[str, Any]) -> Any:
    folder = Path(path)
    if folder.is_dir() and not (folder / "preprocessor_config.json").is_file():
        return _default_processor(config, path)
    extra = {k: v for k, v in kwargs.items() if k != "gguf_file"}
    try:
        return AutoImageProcessor.from_pretrained(path, **extra, **_backend())
    except (OSError, ValueError) as err:
        if folder.is_dir():
            raise ModelLoadError(f"Could not load the image processor in {path}: {err}") from err
        logger.warning("'%s' has no image processor (%s); using defaults.", path, err)
        return _default_processor(config, path)


def _default_processor(config: PretrainedConfig, path: str) -> Any:
    from transformers import ViTImageProcessorPil

    size = getattr(config, "image_size", 224)
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    logger.warning(
        "No image processor (preprocessor_config.json) in '%s': resizing images to %dx%d and "
        "normalising with ImageNet's mean and std. Save an image processor there to choose.",
        path, height, width,
    )  # fmt: skip
    return ViTImageProcessorPil(
        size={"height": height, "width": width}, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)
    )


def _quiet_processor(processor: Any) -> Any:
    # Padding to the batch's largest image happens in collate, for the whole batch at once.
    if hasattr(processor, "do_pad"):
        processor.do_pad = False
    return processor


def _pixel_spec(processor: Any) -> PixelSpec:
    rescale = float(getattr(processor, "rescale_factor", 1 / 255))
    if not getattr(processor, "do_rescale", True):
        rescale = 1.0
    if not getattr(processor, "do_normalize", True):
        return PixelSpec(rescale, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    mean = getattr(processor, "image_mean", None) or IMAGENET_MEAN
    std = getattr(processor, "image_std", None) or IMAGENET_STD
    mean, std = ([m] * 3 if isinstance(m, int | float) else list(m) for m in (mean, std))
    return PixelSpec(rescale, tuple(map(float, mean)), tuple(map(float, std)))

"""What every image backbone shares: pixels in, feature maps out as "tokens".

Preprocessing happens in two steps so that a dataset is stored small and the
expensive work runs on the accelerator:

1. ``tokenize`` (once per image, on CPU): decode to RGB and resize / crop to the
   model's input size with its own image processor; kept as uint8 ``(3, H, W)``.
2. ``forward`` (every batch, on the device): rescale to [0, 1], augment while
   training (a module in the model, as Keras' preprocessing layers), normalise
   with the processor's mean and std, then run the network.

A convolutional feature map ``(B, C, H, W)`` becomes ``(B, H * W, C)`` tokens
with a full attention mask, so the poolings of text models apply unchanged:
``mean`` is global average pooling, ``max`` global max pooling, ``cls`` the class
token of a ViT.

BatchNorm layers whose parameters are frozen stay in inference mode while the
rest trains (``batchnorm="frozen-eval"``, the default): their running statistics
are the pretrained ones and never drift toward a small target dataset. Keras'
advice of keeping every BatchNorm in inference mode, even trainable ones, is
``batchnorm="eval"``; PyTorch's plain ``model.train()`` behaviour is ``"train"``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm.auto import tqdm

from nlptransfer.backbones.base import Backbone, BackboneOutput
from nlptransfer.data.images import IMAGE_SUFFIXES, to_rgb
from nlptransfer.errors import ConfigError
from nlptransfer.registry import Registry

logger = logging.getLogger(__name__)

BATCHNORM_MODES = ("frozen-eval", "eval", "train")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Augmentation = Callable[[torch.Tensor], torch.Tensor]
AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")


@AUGMENTATIONS.register("hflip")
def random_hflip(images: torch.Tensor) -> torch.Tensor:
    """Mirror half of the images left-right (not for digits or text in images)."""
    flip = torch.rand(images.shape[0], device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


@AUGMENTATIONS.register("affine")
def random_affine(images: torch.Tensor) -> torch.Tensor:
    """Rotate up to 10 degrees, scale by 0.9-1.1 and shift up to 10% of the size, per image."""
    n, device = images.shape[0], images.device
    angle = (torch.rand(n, device=device) * 2 - 1) * math.radians(10)
    scale = 0.9 + 0.2 * torch.rand(n, device=device)
    shift = (torch.rand(n, 2, device=device) * 2 - 1) * 0.2  # grid units span 2: 0.2 = 10%
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    rows = [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)]
    theta = torch.stack(rows, 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="border", align_corners=False)


@AUGMENTATIONS.register("color")
def random_color(images: torch.Tensor) -> torch.Tensor:
    """Brightness +-0.1 and contrast x0.8-1.2, per image."""
    n, device = images.shape[0], images.device
    brightness = (torch.rand(n, 1, 1, 1, device=device) * 2 - 1) * 0.1
    contrast = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, device=device)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return ((images - mean) * contrast + mean + brightness).clamp(0, 1)


@dataclass
class ImageOptions:
    """How an image backbone trains: augmentation while training, and BatchNorm behaviour."""

    augment: list[str] = field(default_factory=list)
    batchnorm: str = "frozen-eval"

    def __post_init__(self) -> None:
        for name in self.augment:
            AUGMENTATIONS.get(name)  # an unknown name lists the valid ones
        if self.batchnorm not in BATCHNORM_MODES:
            raise ConfigError(
                f"--batchnorm must be one of {', '.join(BATCHNORM_MODES)}, got '{self.batchnorm}'."
            )


@dataclass
class PixelSpec:
    """How uint8 pixels become model inputs: ``(x * rescale - mean) / std``."""

    rescale: float = 1 / 255
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def as_dict(self) -> dict[str, Any]:
        return {"rescale": self.rescale, "mean": list(self.mean), "std": list(self.std)}


class ImageBackbone(Backbone):
    """Base of image backbones. Subclasses implement ``resize`` and ``feature_maps``."""

    modality = "image"
    variable_length = False
    pixel_spec: PixelSpec
    options: ImageOptions

    def _setup_pixels(self, spec: PixelSpec, options: ImageOptions) -> None:
        self.pixel_spec = spec
        mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (spec.mean, spec.std))
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        self.set_options(options)

    def set_options(self, options: ImageOptions) -> None:
        """Change augmentation and BatchNorm behaviour (e.g. for a new run on a trained body)."""
        self.options = options
        self._augmentations = [AUGMENTATIONS.get(name) for name in options.augment]

    # ---- preprocessing -------------------------------------------------------------------
    def resize(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """RGB uint8 ``(H, W, 3)`` images -> uint8 ``(3, h, w)`` at the model's input size."""
        raise NotImplementedError

    def tokenize(
        self, texts: list[Any], text_pairs: list[Any] | None, max_length: int
    ) -> dict[str, list[Any]]:
        """Decode and resize images (``texts`` holds the images; the name is the contract's)."""
        if text_pairs is not None:
            raise ConfigError("Image models take one image per example; drop --text_pair_column.")
        if any(isinstance(t, str) and not _looks_like_image_path(t) for t in texts[:8]):
            raise ConfigError(
                "This image model got text. Train it on images (an --image_column of paths or "
                "arrays, or a folder of class sub-folders), or pick a text model for text data."
            )
        resized: list[np.ndarray] = []
        chunk = 256  # bounds memory: full-size decoded images are dropped chunk by chunk
        bar = tqdm(total=len(texts), desc="images", disable=len(texts) < 2000, leave=False)
        for start in range(0, len(texts), chunk):
            batch = [to_rgb(image) for image in texts[start : start + chunk]]
            resized += [np.ascontiguousarray(r, dtype=np.uint8) for r in self.resize(batch)]
            bar.update(len(batch))
        bar.close()
        return {"pixel_values": resized}

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = [f["pixel_values"] for f in features]
        height = max(i.shape[-2] for i in images)
        width = max(i.shape[-1] for i in images)
        # Processors that keep the aspect ratio (YOLOS) give sizes that differ: pad bottom / right.
        padded = [np.pad(i, ((0, 0), (0, height - i.shape[-2]), (0, width - i.shape[-1]))) for i in images]
        return {"pixel_values": torch.from_numpy(np.stack(padded))}

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels -> normalised floats, augmented while the module trains."""
        images = pixels.to(self.pixel_mean.dtype) * self.pixel_spec.rescale
        if self.training:
            for augment in self._augmentations:
                images = augment(images)
        return (images - self.pixel_mean) / self.pixel_std

    # ---- forward ------------------------------------------------------------------------
    def feature_maps(
        self, pixel_values: torch.Tensor, output_hidden_states: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """The network's last feature map and (when asked) every hidden one."""
        raise NotImplementedError

    def forward(self, output_hidden_states: bool = False, **inputs: torch.Tensor) -> BackboneOutput:
        pixels = inputs["pixel_values"]
        parameter = next(self.parameters(), None)
        images = self.normalise(pixels)
        if parameter is not None and parameter.is_floating_point():
            images = images.to(parameter.dtype)
        last, hidden = self.feature_maps(images, output_hidden_states)
        tokens = as_tokens(last)
        mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        states = tuple(as_tokens(h) for h in hidden) if hidden is not None else None
        return BackboneOutput(last_hidden_state=tokens, attention_mask=mask, hidden_states=states)

    # ---- BatchNorm ------------------------------------------------------------------------
    def train(self, mode: bool = True) -> ImageBackbone:
        super().train(mode)
        if mode and self.options.batchnorm != "train":
            for module in self.modules():
                if isinstance(module, _BatchNorm) and self._batchnorm_frozen(module):
                    module.eval()
        return self

    def _batchnorm_frozen(self, module: _BatchNorm) -> bool:
        if self.options.batchnorm == "eval":
            return True
        return not any(p.requires_grad for p in module.parameters(recurse=False))

    def image_config(self) -> dict[str, Any]:
        return {"augment": list(self.options.augment), "batchnorm": self.options.batchnorm}


def as_tokens(state: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` feature maps -> ``(B, H * W, C)``; ``(B, T, C)`` tokens pass through."""
    if state.ndim == 4:
        return state.flatten(2).transpose(1, 2)
    if state.ndim == 2:
        return state.unsqueeze(1)
    return state


def _looks_like_image_path(value: str) -> bool:
    if "\n" in value or len(value) > 4096:
        return False
    path = Path(value).expanduser()
    return path.suffix.lower() in IMAGE_SUFFIXES or path.is_file()


def options_from_config(config: dict[str, Any]) -> ImageOptions:
    return ImageOptions(list(config.get("augment", [])), config.get("batchnorm", "frozen-eval"))


__all__ = [
    "AUGMENTATIONS",
    "BATCHNORM_MODES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageBackbone",
    "ImageOptions",
    "PixelSpec",
    "as_tokens",
    "options_from_config",
]

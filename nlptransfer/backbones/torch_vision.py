"""timm and torchvision image models as a :class:`Backbone` (optional: neither is installed by default).

``--model timm:NAME`` (e.g. ``timm:vgg16.tv_in1k``, ``timm:inception_v3``,
``timm:resnet50``) and ``--model torchvision:NAME`` (``torchvision:alexnet``,
``torchvision:vgg16``, ``torchvision:inception_v3``, ...) load the model with its
pretrained weights, or random ones with ``--from_scratch``. The classifier is
cut off; what remains is the convolutional base (Keras' ``include_top=False``).

Both libraries are imported only when such a model is asked for: ``pip install
timm`` (or torchvision) replaces a CPU-only torch with a multi-GB CUDA build, so
they stay out of the default install. Without them a clear error names the extra.

The network's top-level children (split at pooling layers when the base is one
flat ``Sequential``, as VGG's and AlexNet's are) become the layer groups, so
"train the top K blocks" means VGG's last K conv blocks or a ResNet's last K stages.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nlptransfer.backbones.base import BACKBONES, LayerGroup
from nlptransfer.backbones.vision import ImageBackbone, ImageOptions, PixelSpec, options_from_config
from nlptransfer.errors import ConfigError, ModelLoadError

LIBRARIES = ("timm", "torchvision")
# torchvision classifiers whose convolutional base is the ``features`` attribute.
_FEATURES_ATTR = "features"
# Children of a torchvision / timm classifier that belong to its head, not its base.
_HEAD_NAMES = {"fc", "classifier", "head", "avgpool", "global_pool", "dropout", "AuxLogits", "pre_logits",
               "head_drop", "fc_norm"}  # fmt: skip
_POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def is_torch_vision_source(name: str) -> bool:
    return name.split(":", 1)[0] in LIBRARIES and ":" in name


def _library(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ModelLoadError(
            f"--model {name}:... needs the optional package '{name}', which is not installed. Install it "
            f"with: pip install 'nlptransfer[{name}]' (note: it pulls a CUDA build of torch unless a CPU "
            "torch is pinned), or use a Hugging Face image model (ResNet, ViT, ConvNeXt, ...) instead."
        ) from err


@BACKBONES.register("torch-image")
class TorchVisionBackbone(ImageBackbone):
    """A convolutional (or ViT) base from timm or torchvision, or any image ``nn.Module``."""

    registry_name = "torch-image"

    def __init__(
        self, base: nn.Module, spec: PixelSpec, input_size: tuple[int, int], source: str = "",
        options: ImageOptions | None = None, crop_pct: float = 1.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.base = base
        self.source = source
        self.size = (int(input_size[0]), int(input_size[1]))
        self.crop_pct = float(crop_pct)
        self._setup_pixels(spec, options or ImageOptions())
        with torch.no_grad():
            was_training = base.training
            probe = base.eval()(torch.zeros(1, 3, *self.size))
            base.train(was_training)
        if probe.ndim not in (3, 4):
            raise ModelLoadError(f"'{source}' gives outputs of shape {tuple(probe.shape)}, not feature maps.")
        self.hidden_size = int(probe.shape[1] if probe.ndim == 4 else probe.shape[-1])

    @classmethod
    def from_pretrained(
        cls, name: str, from_scratch: bool = False, options: ImageOptions | None = None
    ) -> TorchVisionBackbone:
        library, model_name = name.split(":", 1)
        build = _timm_base if library == "timm" else _torchvision_base
        base, spec, size, crop = build(model_name, pretrained=not from_scratch)
        return cls(base, spec, size, name, options, crop)

    # ---- pixels --------------------------------------------------------------------------
    def resize(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Resize the shorter side to size / crop_pct, then centre-crop to size (timm's eval transform)."""
        from PIL import Image

        height, width = self.size
        out = []
        for array in images:
            image = Image.fromarray(array)
            scale = max(height, width) / self.crop_pct / min(image.size)
            resized = image.resize(
                (round(image.size[0] * scale), round(image.size[1] * scale)), Image.BICUBIC
            )
            left, top = (resized.size[0] - width) // 2, (resized.size[1] - height) // 2
            cropped = resized.crop((left, top, left + width, top + height))
            out.append(np.asarray(cropped, dtype=np.uint8).transpose(2, 0, 1))
        return out

    def feature_maps(
        self, pixel_values: torch.Tensor, output_hidden_states: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        last = self.base(pixel_values)
        return last, ((last,) if output_hidden_states else None)

    def num_hidden_states(self) -> int:
        return 1  # the top feature map only

    # ---- layer groups --------------------------------------------------------------------
    def layer_groups(self) -> list[LayerGroup]:
        groups: list[LayerGroup] = []
        for kind, children in _blocks(self.base):
            params = [(f"base.{n}.{p}", t) for n, m in children for p, t in m.named_parameters()]
            if params:
                groups.append(LayerGroup(f"base.{children[0][0]}", kind, params))
        if not any(g.kind == "block" for g in groups):
            raise ConfigError(f"'{self.source}' has no layers to group for freezing.")
        return groups

    # ---- save / load ---------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {
            "source": self.source, "input_size": list(self.size), "crop_pct": self.crop_pct,
            "pixels": self.pixel_spec.as_dict(), **self.image_config(),
        }  # fmt: skip

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)  # the config holds everything needed

    @classmethod
    def from_saved(cls, directory: Path, config: dict[str, Any]) -> TorchVisionBackbone:
        source = config["source"]
        library, model_name = source.split(":", 1)
        build = _timm_base if library == "timm" else _torchvision_base
        base, _, _, _ = build(model_name, pretrained=False)
        pixels = config["pixels"]
        spec = PixelSpec(pixels["rescale"], tuple(pixels["mean"]), tuple(pixels["std"]))
        return cls(
            base, spec, tuple(config["input_size"]), source, options_from_config(config), config["crop_pct"]
        )


def _blocks(base: nn.Module) -> list[tuple[str, list[tuple[str, nn.Module]]]]:
    """(kind, children) groups of the base, bottom to top.

    A flat stack of layers (VGG's and AlexNet's ``features``) splits after each pooling
    layer; otherwise each composite child (a ResNet stage, an Inception block, a ViT block)
    is a block, the single layers before the first one the stem and those after the last
    one the final group. A child holding most of the weights (timm's ``blocks``) is opened.
    """
    children = _children(base)
    total = sum(p.numel() for p in base.parameters()) or 1
    for index, (name, module) in enumerate(children):
        if isinstance(module, nn.Sequential | nn.ModuleList) and _size(module) > total / 2:
            inner = [(f"{name}.{n}", m) for n, m in module.named_children()]
            children = children[:index] + inner + children[index + 1 :]
            break
    flat = all(_is_leaf(m) for _, m in children if _size(m))
    groups: list[tuple[str, list[tuple[str, nn.Module]]]] = []
    current: list[tuple[str, nn.Module]] = []
    for name, module in children:
        if flat:
            current.append((name, module))
            if isinstance(module, _POOLS):
                groups.append(("block", current))
                current = []
        elif _is_leaf(module):
            current.append((name, module))
        else:
            if current:
                groups.append(("embeddings" if not groups else "block", current))
            groups.append(("block", [(name, module)]))
            current = []
    if current:
        groups.append(("block" if flat else "final", current))
    return groups


def _children(base: nn.Module) -> list[tuple[str, nn.Module]]:
    if isinstance(base, _TimmFeatures):
        return [(f"model.{n}", m) for n, m in base.model.named_children() if n not in _HEAD_NAMES]
    return list(base.named_children())


def _size(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _timm_base(name: str, pretrained: bool) -> tuple[nn.Module, PixelSpec, tuple[int, int], float]:
    timm = _library("timm")
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0)
    except (RuntimeError, OSError, ValueError) as err:
        raise ModelLoadError(f"timm could not create '{name}': {err}") from err
    data = timm.data.resolve_model_data_config(model)
    base = _TimmFeatures(model)
    size = tuple(data["input_size"][1:])
    return (
        base,
        PixelSpec(1 / 255, tuple(data["mean"]), tuple(data["std"])),
        size,
        float(data.get("crop_pct", 1.0)),
    )


class _TimmFeatures(nn.Module):
    """A timm model's unpooled features (``forward_features``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)


def _torchvision_base(name: str, pretrained: bool) -> tuple[nn.Module, PixelSpec, tuple[int, int], float]:
    models = _library("torchvision").models
    try:
        weights = models.get_model_weights(name).DEFAULT if pretrained else None
        # Inception's auxiliary classifier is training-time only; without weights it can be left out.
        extra = (
            {"aux_logits": False, "init_weights": True}
            if name.startswith("inception") and not pretrained
            else {}
        )
        model = models.get_model(name, weights=weights, **extra)
    except (RuntimeError, OSError, ValueError) as err:
        raise ModelLoadError(f"torchvision could not create '{name}': {err}") from err
    size = 299 if name.startswith("inception") else 224
    mean, std, crop = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224 / 256
    if weights is not None:
        transform = weights.transforms()
        mean, std = tuple(transform.mean), tuple(transform.std)
        size = int(transform.crop_size[0])
        crop = size / int(transform.resize_size[0])
    if hasattr(model, _FEATURES_ATTR):
        base = getattr(model, _FEATURES_ATTR)
    else:
        base = nn.Sequential(*[m for n, m in model.named_children() if n not in _HEAD_NAMES])
    return base, PixelSpec(1 / 255, mean, std), (size, size), crop

"""torchvision: `torchvision:NAME`, and the second library a bare `NAME` is looked up in: its
image classifiers, its semantic segmentation models (fcn, deeplabv3, lraspp) and its detectors
(Faster/Mask/Keypoint R-CNN, RetinaNet, FCOS, SSD); its video, optical-flow and quantized models
are refused by kind. Preprocessing and labels come from the weights enum's transforms and
metadata: a segmentation model's photo is resized (shorter side) and not cropped, a detector's
is given as it is (the model resizes and normalises it itself).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from ..errors import UnknownModelError, UsageError
from ..preprocess import Preprocess
from .checkpoint import download_failed
from .registry import Source, register_source

if TYPE_CHECKING:
    from torch import nn
    from torchvision.models import WeightsEnum

__all__ = ["TorchvisionSource"]

# Random-init builds of these default to auxiliary heads and a warning; eval needs neither.
AUX_HEADS = ("inception_v3", "googlenet")


@register_source
class TorchvisionSource(Source):
    prefix = "torchvision"
    order = 2
    bare = True

    def has(self, name: str) -> bool:
        return name in _by_task()

    def names(self, pretrained: bool = False) -> list[str]:
        from torchvision.models import get_model_weights

        names = sorted(_by_task())
        return [name for name in names if not pretrained or list(get_model_weights(name))]

    def task(self, name: str) -> str:
        return _by_task().get(name, "classification")

    def refusal(self, name: str) -> UnknownModelError | None:
        from torchvision.models import list_models

        if name not in list_models():
            return None
        return UnknownModelError(
            f"'{name}' is a torchvision video, optical-flow or quantized model; gradcam "
            "explains image classifiers, segmentation models and detectors. List them with "
            "`gradcam models PATTERN`"
        )

    def build(
        self, name: str, *, pretrained: bool, num_classes: int | None, input_size: int | None
    ) -> tuple[nn.Module, str]:
        from torchvision.models import get_model

        kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
        enum = _weights_enum(name)
        if self.task(name) != "classification":
            kwargs["weights_backbone"] = None  # the ImageNet backbone would be downloaded
        if not pretrained:
            if name in AUX_HEADS:
                kwargs.update(aux_logits=False, init_weights=True)
            return get_model(name, weights=None, **kwargs), "random"
        if enum is None:
            raise UsageError(
                f"torchvision has no pretrained weights for '{name}'; "
                "pass pretrained=False or weights=PATH"
            )
        classes = len(enum.meta["categories"])
        if num_classes is not None and num_classes != classes:
            raise UsageError(
                f"num_classes={num_classes} does not fit torchvision's pretrained '{name}' "
                f"({classes} classes); add weights=PATH or pretrained=False"
            )
        try:
            model = get_model(name, weights=enum, **kwargs)
        except Exception as exc:  # urllib errors, hash mismatch, ...
            raise download_failed(name, exc) from exc
        return model, f"pretrained:{enum}"

    def preprocess(self, model: nn.Module, name: str) -> Preprocess:
        enum = _weights_enum(name)
        task = self.task(name)
        if task == "detection":  # [0, 1] pixels as they are; the model resizes and normalises
            return Preprocess.as_given()
        if enum is None:
            return Preprocess()
        t = enum.transforms()
        if task == "segmentation":  # SemanticSegmentation: shorter side resized, no crop
            side = t.resize_size[0] if t.resize_size else SEGMENTATION_SIDE
            return Preprocess(
                input_size=(side, side),
                resize_shorter=side,
                resize_mode="keep",
                mean=tuple(t.mean),
                std=tuple(t.std),
            )
        crop = t.crop_size[0]
        interpolation = getattr(t.interpolation, "value", "bilinear")
        return Preprocess(
            input_size=(crop, crop),
            resize_shorter=t.resize_size[0],
            mean=tuple(t.mean),
            std=tuple(t.std),
            interpolation=interpolation if interpolation in ("bilinear", "bicubic") else "bilinear",
        )

    def labels(self, model: nn.Module, name: str) -> list[str] | None:
        enum = _weights_enum(name)
        return list(enum.meta["categories"]) if enum is not None else None


# A segmentation model's shorter side when its weights say none.
SEGMENTATION_SIDE = 520


@functools.cache
def _by_task() -> dict[str, str]:
    """Every torchvision model gradcam explains → its task: the image classifiers (in
    torchvision.models itself), segmentation and detection models (in their sub-modules)."""
    import torchvision.models as models
    from torchvision.models import list_models

    found = dict.fromkeys(list_models(module=models), "classification")
    found.update(dict.fromkeys(list_models(module=models.segmentation), "segmentation"))
    found.update(dict.fromkeys(list_models(module=models.detection), "detection"))
    return found


def _weights_enum(name: str) -> WeightsEnum | None:
    """The architecture's default pretrained weights (None: it has none)."""
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(name).DEFAULT
    except (ValueError, AttributeError, KeyError):
        return None

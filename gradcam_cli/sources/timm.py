"""timm: `timm:NAME` (pretrained tags allowed: `timm:resnet50.a1_in1k`), and the first library a
bare `NAME` is looked up in. Preprocessing and labels come from the model's data config.

timm is imported inside the functions: it takes about 0.7 s, which a run of another library's
model must not wait for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..preprocess import Preprocess, ResizeMode
from .checkpoint import download_failed
from .registry import Source, register_source

if TYPE_CHECKING:
    from torch import nn

__all__ = ["TimmSource", "timm_preprocess", "timm_labels"]


@register_source
class TimmSource(Source):
    prefix = "timm"
    order = 1
    bare = True

    def has(self, name: str) -> bool:
        import timm

        return timm.is_model(name)

    def names(self, pretrained: bool = False) -> list[str]:
        import timm

        return timm.list_models(pretrained=pretrained)

    def build(
        self, name: str, *, pretrained: bool, num_classes: int | None, input_size: int | None
    ) -> tuple[nn.Module, str]:
        kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
        if not pretrained:
            return _create(name, False, kwargs, input_size), "random"
        try:
            model = _create(name, True, kwargs, input_size)
        except RuntimeError as exc:  # no pretrained tag for this architecture
            if "No pretrained weights exist" in str(exc):
                raise UsageError(f"{exc}; pass pretrained=False or weights=PATH") from exc
            raise download_failed(name, exc) from exc
        except Exception as exc:  # hub clients raise many types: OSError, HTTP errors, ...
            raise download_failed(name, exc) from exc
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        ident = cfg.get("hf_hub_id") or f"{cfg.get('architecture', name)}.{cfg.get('tag', '')}"
        return model, f"pretrained:{ident}"

    def preprocess(self, model: nn.Module, name: str) -> Preprocess:
        return timm_preprocess(model)

    def labels(self, model: nn.Module, name: str) -> list[str] | None:
        return timm_labels(model)


def _create(
    name: str, pretrained: bool, kwargs: dict[str, Any], input_size: int | None
) -> nn.Module:
    """timm.create_model; with --input-size, built for that size where the architecture has
    one (ViT, Swin, MaxViT, ...: timm resamples pretrained position embeddings to it)."""
    import timm

    if input_size is not None:
        try:
            return timm.create_model(name, pretrained=pretrained, img_size=input_size, **kwargs)
        except TypeError as exc:  # a CNN: any size goes, and its constructor has no img_size
            if "img_size" not in str(exc):
                raise
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def timm_preprocess(model: nn.Module) -> Preprocess:
    """The eval transform of the model's data config (any module that carries timm's
    `pretrained_cfg`), as a Preprocess."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    _, h, w = cfg["input_size"]
    crop_pct = cfg.get("crop_pct") or 1.0
    # timm's crop modes: 'squash' and 'border' (a letterbox) as in Preprocess, else 'center'
    crop_mode = cfg.get("crop_mode")
    mode: ResizeMode = (
        "squash" if crop_mode == "squash" else "pad" if crop_mode == "border" else "shorter"
    )
    interpolation = cfg.get("interpolation", "bicubic")
    return Preprocess(
        input_size=(h, w),
        resize_shorter=int(min(h, w) / crop_pct),  # timm: floor(img_size / crop_pct)
        resize_mode=mode,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=interpolation if interpolation in ("bilinear", "nearest") else "bicubic",
    )


def timm_labels(model: nn.Module) -> list[str] | None:
    """ImageNet's class names, when the model's config says which ImageNet subset it knows."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model)
    if not subset:
        return None
    info = ImageNetInfo(subset)
    return [info.index_to_description(i) for i in range(info.num_classes())]

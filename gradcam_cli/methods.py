"""CAM methods: each a few lines over what the engine hands it for one layer (a `LayerView`).

The registry is the one list of method names: the CLI's `--method` choices, its help text and the
method table in docs/methods.md all come from `METHODS`. This module does not import torch at module
level (methods only call tensor methods, or import torch inside a function), so `gradcam --help` can
list the methods without paying for torch.

Notation in the formulas: A is the target layer's output [B, C, h, w], y the target class's score
(the logit), g = ∂y/∂A (from the head only: see engine.py), Z = h·w.

Every map is combined over channels by a plain sum, or, for the eigen methods and with
`eigen_smooth`, by the first principal component; then a ReLU keeps the positive evidence.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from .errors import LayerError, UsageError, did_you_mean

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "CamMethod",
    "MethodOption",
    "LayerView",
    "METHODS",
    "register_method",
    "get_method",
    "check_method_options",
    "methods_table",
    "first_principal_component",
]

METHODS: dict[str, type[CamMethod]] = {}

# Masked images per full forward pass (Score-CAM), as pytorch-grad-cam and torchcam batch them.
FORWARD_CHUNK = 32
# Ablated activations per head-only pass: at most this many rows, and about this many bytes.
HEAD_CHUNK_ROWS = 256
HEAD_CHUNK_BYTES = 64 << 20


def register_method(cls: type[CamMethod]) -> type[CamMethod]:
    """Class decorator: add a method to the registry under `cls.name`, refusing duplicates."""
    if cls.name in METHODS:
        raise ValueError(f"method name '{cls.name}' is registered twice")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str, **settings: object) -> CamMethod:
    """The method named `name`, with its own options (`CamMethod.options`) where given."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise UsageError(
            f"unknown method='{name}'."
            + did_you_mean(name, METHODS, n=1)
            + f" Choose one of: {', '.join(METHODS)}"
        ) from None
    return cls(**settings)


@dataclass(frozen=True)
class MethodOption:
    """A method's own setting (`CamMethod.options`): a keyword of Explainer's
    `method_settings` and a flag of `gradcam explain` (`--k-sigma`), a number or a choice."""

    name: str
    default: float | str | None
    help: str
    choices: tuple[str, ...] = ()
    integer: bool = False  # a whole number, 0 and up (a seed); else a positive number

    def checked(self, method: str, value: object) -> float | str:
        if self.choices:
            if value not in self.choices:
                raise UsageError(
                    f"{self.name}='{value}' is not one of {', '.join(self.choices)} for "
                    f"method='{method}'." + did_you_mean(str(value), self.choices, n=1)
                )
            return str(value)
        try:
            number = float(value)  # type: ignore[arg-type]  # anything float() takes
        except (TypeError, ValueError):
            number = float("nan")
        if self.integer:
            if not (math.isfinite(number) and number >= 0 and number == int(number)):
                raise UsageError(f"{self.name}= must be a whole number, 0 or more, got {value}")
            return int(number)
        if not (math.isfinite(number) and number > 0):
            raise UsageError(f"{self.name}= must be a positive number, got {value}")
        return number


def method_option_names() -> list[str]:
    """Every registered method's own options, by keyword (the CLI's flags for them)."""
    return list(dict.fromkeys(option.name for cls in METHODS.values() for option in cls.options))


def method_option_help(name: str) -> str:
    """The help of a method's own option, with its choices and default (`--help`)."""
    option = next(o for cls in METHODS.values() for o in cls.options if o.name == name)
    choices = f": {', '.join(option.choices)}" if option.choices else ""
    default = "" if option.default is None else f"; default {option.default}"
    return f"{option.help}{choices}{default}"


def check_method_options(name: str, *, eigen_smooth: bool = False, **settings: object) -> CamMethod:
    """The method named `name` with its `settings` checked, and against the smoothing options,
    before any work starts: a setting of another method is refused, naming whose it is."""
    cls = get_method(name).__class__
    own = {option.name: option for option in cls.options}
    for key, value in settings.items():
        if key not in own:
            owners = [m for m, c in METHODS.items() if key in {o.name for o in c.options}]
            whose = f"an option of method={'/'.join(owners)}" if owners else "no method's option"
            raise UsageError(f"{key}= is {whose}, not of method='{name}'")
        settings[key] = own[key].checked(name, value)
    method = cls(**settings)
    if eigen_smooth and not method.supports_eigen_smooth:
        raise UsageError(
            f"eigen_smooth=True combines a layer's channels, and method='{name}' has no layer "
            "channels to combine; drop eigen_smooth=True, or use method='guided-gradcam'"
        )
    return method


@dataclass(frozen=True)
class LayerView:
    """What a method sees of one target layer, for B images and K target classes each."""

    activations: Tensor  # A [B, C, h, w], the layer's output as the module returned it
    gradients: list[Tensor]  # per target rank, g [B, C, h, w]; empty unless needs_gradients
    targets: Tensor  # [B, K] slots: class indices, or a detector's detections (tasks/)
    scores: Tensor  # [B, T] the images' scores of every slot
    images: Tensor  # [B, 3, H, W] the model's input
    # The model after the layer, on activations we supply: (rows [N, C, h, w], image index [N])
    # → class scores [N, num_classes]. The engine runs the head alone where it can.
    head: Callable[[Tensor, Tensor], Tensor]
    # The whole model without gradients: (images [N, 3, H, W], which image each is a copy of
    # [N]) → scores [N, T].
    forward: Callable[[Tensor, Tensor], Tensor]
    guided_gradients: list[Tensor]  # per rank, guided ∂y/∂x [B, 3, H, W]; guided methods only
    layer: str = ""
    eigen_smooth: bool = False
    # Maps [B, K, h, w] → the part of them over the images (a detector pads the input it
    # resizes: Score-CAM's masks must cover the image, not the padding). Identity otherwise.
    frame: Callable[[Tensor], Tensor] = lambda maps: maps


class CamMethod:
    """A method: `maps(view)` → [B, K, h, w] float32 >= 0. Capabilities are class attributes."""

    name: ClassVar[str]
    summary: ClassVar[str]
    formula: ClassVar[str]  # one line, for docs/methods.md's table
    needs_gradients: ClassVar[bool] = True  # g = ∂y/∂A through the head
    uses_head: ClassVar[bool] = False  # re-runs the head (only) on modified activations
    needs_full_forwards: ClassVar[bool] = False  # runs the whole model on modified images
    guided: ClassVar[bool] = False  # backward to the pixels with ReLU gradients clamped
    guided_layer_free: ClassVar[bool] = False  # the guided image is the same at every layer
    requires_gap_linear_head: ClassVar[bool] = False  # CAM's architecture after the layer
    projects: ClassVar[bool] = False  # always combines channels by their principal component
    supports_eigen_smooth: ClassVar[bool] = True
    options: ClassVar[tuple[MethodOption, ...]] = ()  # its own settings, with their defaults

    def __init__(self, **settings: object):
        """`settings`: values for `options` (checked by check_method_options)."""
        self.settings: dict[str, object] = {option.name: option.default for option in self.options}
        self.settings.update(settings)
        self.given = dict(settings)  # what a report records: the settings given

    def maps(self, view: LayerView) -> Tensor:
        import torch

        ranks = range(view.targets.shape[1])
        return torch.stack([self.combine(view, self.contributions(view, r)) for r in ranks], 1)

    def contributions(self, view: LayerView, rank: int) -> Tensor:
        """Each channel's part of the map, [B, C, h, w]: by default w_k · A_k."""
        return self.weights(view, rank)[:, :, None, None] * view.activations.float()

    def weights(self, view: LayerView, rank: int) -> Tensor:
        """Channel weights [B, C] for the target of rank `rank`."""
        raise NotImplementedError

    def combine_weighted(self, view: LayerView, weights: Tensor) -> Tensor:
        """Channel weights for every target at once, [B, C, K] → maps [B, K, h, w]."""
        import torch

        activations = view.activations.float()
        ranks = range(weights.shape[2])
        return torch.stack(
            [self.combine(view, weights[:, :, r, None, None] * activations) for r in ranks], 1
        )

    def combine(self, view: LayerView, contributions: Tensor) -> Tensor:
        """[B, C, h, w] → [B, h, w]: channel sum (or principal component), then ReLU."""
        if self.projects or view.eigen_smooth:
            return first_principal_component(contributions).clamp(min=0)
        return contributions.sum(dim=1).clamp(min=0)

    def guided_images(self, guided_gradients: list[Tensor], maps: Tensor) -> Tensor:
        """Guided methods: the input-resolution image per target, [B, K, 3, H, W]."""
        raise NotImplementedError


# -- the gradient family: a few lines each ---------------------------------------------------


@register_method
class GradCAM(CamMethod):
    """Selvaraju et al. 2017: channel weights are the spatial mean of the gradient."""

    name = "gradcam"
    summary = "Grad-CAM: channel weights are the mean gradient"
    formula = "ReLU(Σ_k α_k A_k), α_k = mean_ij g_kij"

    def weights(self, view: LayerView, rank: int) -> Tensor:
        return view.gradients[rank].float().mean(dim=(2, 3))


@register_method
class GradCAMPlusPlus(CamMethod):
    """Chattopadhay et al. 2018, eq. 19 (the higher derivatives of exp(y) written with g)."""

    name = "gradcam++"
    summary = "Grad-CAM++: positive gradients weighted per position"
    formula = "ReLU(Σ_k w_k A_k), w_k = Σ_ij a_kij ReLU(g_kij), a = g² / (2g² + g³ Σ_ab A_kab)"

    def weights(self, view: LayerView, rank: int) -> Tensor:
        g, a = view.gradients[rank].float(), view.activations.float()
        g2 = g * g
        alpha = g2 / (2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g + 1e-6)
        alpha = alpha * (g != 0)  # no gradient, no weight (pytorch-grad-cam does the same)
        return (alpha * g.clamp(min=0)).sum(dim=(2, 3))


@register_method
class XGradCAM(CamMethod):
    """Fu et al. 2020: gradients weighted by the normalised activation."""

    name = "xgradcam"
    summary = "XGrad-CAM: gradients weighted by the normalised activation"
    formula = "ReLU(Σ_k w_k A_k), w_k = Σ_ij g_kij A_kij / Σ_ij A_kij"

    def weights(self, view: LayerView, rank: int) -> Tensor:
        g, a = view.gradients[rank].float(), view.activations.float()
        return (g * a).sum(dim=(2, 3)) / (a.sum(dim=(2, 3)) + 1e-7)


@register_method
class LayerCAM(CamMethod):
    """Jiang et al. 2021: positive gradients as per-position weights."""

    name = "layercam"
    summary = "LayerCAM: positive gradients as per-position weights"
    formula = "ReLU(Σ_k ReLU(g_k) ⊙ A_k)"

    def contributions(self, view: LayerView, rank: int) -> Tensor:
        return view.gradients[rank].float().clamp(min=0) * view.activations.float()


@register_method
class HiResCAM(CamMethod):
    """Draelos & Carin 2020: gradient times activation, position by position."""

    name = "hirescam"
    summary = "HiResCAM: gradient ⊙ activation, summed over channels"
    formula = "ReLU(Σ_k g_k ⊙ A_k)"

    def contributions(self, view: LayerView, rank: int) -> Tensor:
        return view.gradients[rank].float() * view.activations.float()


@register_method
class GradCAMElementWise(CamMethod):
    """pytorch-grad-cam's element-wise Grad-CAM: the ReLU before the channel sum."""

    name = "gradcam-elementwise"
    summary = "element-wise Grad-CAM: ReLU of gradient ⊙ activation, then the sum"
    formula = "ReLU(Σ_k ReLU(g_k ⊙ A_k))"

    def contributions(self, view: LayerView, rank: int) -> Tensor:
        return (view.gradients[rank].float() * view.activations.float()).clamp(min=0)


@register_method
class EigenCAM(CamMethod):
    """Muhammad & Yeasin 2020: the activations' first principal component (class-agnostic)."""

    name = "eigencam"
    summary = "Eigen-CAM: first principal component of A (no gradients, same for every class)"
    formula = "ReLU(PC1(A))"
    needs_gradients = False
    projects = True

    def contributions(self, view: LayerView, rank: int) -> Tensor:
        return view.activations.float()


@register_method
class EigenGradCAM(CamMethod):
    """Eigen-CAM on gradient ⊙ activation: class-specific."""

    name = "eigengradcam"
    summary = "Eigen-Grad-CAM: first principal component of g ⊙ A"
    formula = "ReLU(PC1(g ⊙ A))"
    projects = True

    def contributions(self, view: LayerView, rank: int) -> Tensor:
        return view.gradients[rank].float() * view.activations.float()


@register_method
class SegEigenCAM(CamMethod):
    """Chung & Ying 2025, for segmentation models (pytorch-grad-cam's SegEigenCAM): the first
    principal component of |g| ⊙ A, its sign chosen so that the larger extreme is positive."""

    name = "seg-eigencam"
    summary = "Seg-Eigen-CAM: first principal component of |g| ⊙ A, larger extreme positive"
    formula = "ReLU(±PC1(|g| ⊙ A)), the sign that makes max ≥ |min|"
    supports_eigen_smooth = False  # it always projects, with a sign rule of its own

    def contributions(self, view: LayerView, rank: int) -> Tensor:
        return view.gradients[rank].float().abs() * view.activations.float()

    def combine(self, view: LayerView, contributions: Tensor) -> Tensor:
        import torch

        projection = first_principal_component(contributions)  # [B, h, w]
        low = projection.flatten(1).amin(dim=1).abs()
        high = projection.flatten(1).amax(dim=1).abs()
        sign = torch.where(low > high, -1.0, 1.0)[:, None, None]  # the paper's Eq. 13
        return (projection * sign).clamp(min=0)


@register_method
class FEM(CamMethod):
    """Fuad et al. 2020, the Feature Explanation Method (pytorch-grad-cam's FEM): each channel
    weighted by the share of its positions where it exceeds its own mean by K_SIGMA standard
    deviations. No gradients: the same map for every class."""

    name = "fem"
    summary = "FEM: each channel weighted by its share of positions above mean + kσ (no gradients)"
    formula = "ReLU(Σ_k w_k A_k), w_k = mean_ij [A_k,ij > μ_k + k σ_k], k = 2"
    needs_gradients = False
    options = (
        MethodOption(
            "k_sigma",
            2.0,  # pytorch-grad-cam's k
            "fem: a position counts for its channel where it exceeds the channel's mean by "
            "this many standard deviations",
        ),
    )

    def weights(self, view: LayerView, rank: int) -> Tensor:
        activations = view.activations.float()
        mean = activations.mean(dim=(2, 3), keepdim=True)
        spread = activations.std(dim=(2, 3), correction=0, keepdim=True)  # NumPy's std
        k = float(self.settings["k_sigma"])  # type: ignore[arg-type]  # a checked number
        return (activations > mean + k * spread).float().mean(dim=(2, 3))


@register_method
class RandomCAM(CamMethod):
    """pytorch-grad-cam's RandomCAM, a baseline: channel weights drawn uniformly from [−1, 1)
    (`seeded_uniform`, the same seeded draw as the faithfulness metrics' random map), one set
    per target rank, the same for every image (pytorch-grad-cam draws one per image of the
    batch: a map would then depend on the batch). A map no better than it explains nothing."""

    name = "randomcam"
    summary = "Random-CAM: random channel weights in [−1, 1), seeded (a baseline)"
    formula = "ReLU(Σ_k w_k A_k), w_k ~ U[−1, 1) seeded"
    needs_gradients = False
    options = (MethodOption("seed", 0, "randomcam: the seed of its weights", integer=True),)

    def weights(self, view: LayerView, rank: int) -> Tensor:
        batch, channels = view.activations.shape[:2]
        seed = int(self.settings["seed"]) + rank  # type: ignore[call-overload]  # a checked int
        # One draw for every image: a map must not depend on the batch it was explained in.
        draw = seeded_uniform((1, channels), seed, low=-1.0, high=1.0).expand(batch, -1)
        return draw.to(view.activations.device)


def seeded_uniform(
    shape: tuple[int, ...], seed: int, low: float = 0.0, high: float = 1.0
) -> Tensor:
    """Uniform noise in [low, high) from a CPU generator seeded with `seed`: the same values on
    every machine and device. Random-CAM's weights and the faithfulness baseline's random map."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(shape, generator=generator)


KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")


@register_method
class KPCACAM(CamMethod):
    """Karmani et al. 2024, KPCA-CAM (pytorch-grad-cam's KPCA_CAM): Eigen-CAM with kernel PCA,
    scikit-learn's definition (kernel centred, first component scaled by √λ, the sign that
    makes the largest value positive), computed here with torch. No gradients."""

    name = "kpcacam"
    summary = "KPCA-CAM: first kernel principal component of A (no gradients, any class)"
    formula = "ReLU(KPC1(A)), kernel sigmoid: tanh(γ a·b + 1), γ = 1/C"
    needs_gradients = False
    supports_eigen_smooth = False  # it is a projection already
    options = (
        MethodOption("kernel", "sigmoid", "kpcacam: the kernel", choices=KERNELS),
        MethodOption("kernel_gamma", None, "kpcacam: the kernel's γ (default 1 / channels)"),
    )

    def contributions(self, view: LayerView, rank: int) -> Tensor:
        return view.activations.float()

    def combine(self, view: LayerView, contributions: Tensor) -> Tensor:
        kernel, gamma = str(self.settings["kernel"]), self.settings["kernel_gamma"]
        return kernel_principal_component(contributions, kernel, gamma).clamp(min=0)


# -- methods that re-run part of the model -----------------------------------------------------


@register_method
class AblationCAM(CamMethod):
    """Desai & Ramaswamy 2020: the score's relative drop when one channel is zeroed.

    Only the head runs again, on the stored activations with one channel zeroed per row (the
    engine's `view.head`): the backbone never runs twice.
    """

    name = "ablationcam"
    summary = "Ablation-CAM: relative score drop when a channel is zeroed (head-only re-runs)"
    formula = "ReLU(Σ_k w_k A_k), w_k = (y − y[A_k = 0]) / y"
    needs_gradients = False
    uses_head = True

    def maps(self, view: LayerView) -> Tensor:
        import torch

        ablated = _ablated_scores(view)  # [B, C, num_classes]
        targets = view.targets  # [B, K]
        dropped = ablated.gather(2, targets[:, None, :].expand(-1, ablated.shape[1], -1))
        original = view.scores.float().gather(1, targets)[:, None, :]  # [B, 1, K]
        safe = torch.where(original == 0, torch.ones_like(original), original)
        weights = (original - dropped) / safe  # [B, C, K]
        return self.combine_weighted(view, weights)


def _ablated_scores(view: LayerView) -> Tensor:
    """[B, C, num_classes]: the scores with channel k of A set to zero, for every k."""
    import torch

    activations = view.activations
    channels = activations.shape[1]
    row_bytes = activations[0].numel() * activations.element_size()
    step = max(1, min(HEAD_CHUNK_ROWS, HEAD_CHUNK_BYTES // max(1, row_bytes)))
    per_image = []
    for b in range(activations.shape[0]):
        parts = []
        for start in range(0, channels, step):
            ablate = torch.arange(start, min(channels, start + step), device=activations.device)
            rows = activations[b].expand(len(ablate), -1, -1, -1).clone()
            rows[torch.arange(len(ablate)), ablate] = 0
            index = torch.full((len(ablate),), b, dtype=torch.long, device=activations.device)
            parts.append(view.head(rows, index).float())
        per_image.append(torch.cat(parts))
    return torch.stack(per_image)


@register_method
class ScoreCAM(CamMethod):
    """Wang et al. 2020: each channel, upsampled and min-max scaled, masks the input."""

    name = "scorecam"
    summary = "Score-CAM: scores of the image masked by each channel (full forwards)"
    formula = "ReLU(Σ_k w_k A_k), w = softmax_k y(x ⊙ minmax(up(A_k)))"
    needs_gradients = False
    needs_full_forwards = True

    def maps(self, view: LayerView) -> Tensor:

        masked = _masked_scores(view)  # [B, C, num_classes]
        targets = view.targets
        selected = masked.gather(2, targets[:, None, :].expand(-1, masked.shape[1], -1))
        weights = selected.softmax(dim=1)  # over channels; a baseline score would cancel
        return self.combine_weighted(view, weights)


def _masked_scores(view: LayerView) -> Tensor:
    """[B, C, num_classes]: the scores of each image masked by each of its upsampled channels."""
    import torch
    import torch.nn.functional as F

    images, activations = view.images, view.activations.float()
    size = tuple(images.shape[2:])
    per_image = []
    for b in range(images.shape[0]):
        parts = []
        for start in range(0, activations.shape[1], FORWARD_CHUNK):
            chunk = view.frame(activations[b : b + 1, start : start + FORWARD_CHUNK])
            masks = F.interpolate(chunk, size=size, mode="bilinear", align_corners=False)[0]
            low = masks.amin(dim=(1, 2), keepdim=True)
            high = masks.amax(dim=(1, 2), keepdim=True)
            masks = (masks - low) / (high - low + 1e-8)  # a constant channel masks everything
            rows = torch.full((masks.shape[0],), b, dtype=torch.long, device=images.device)
            parts.append(view.forward(images[b] * masks[:, None].to(images.dtype), rows).float())
        per_image.append(torch.cat(parts))
    return torch.stack(per_image)


@register_method
class CAM(CamMethod):
    """Zhou et al. 2016, for models whose head is global average pooling + linear.

    For such a head, g_kij = W_ck / Z at every position, so W_ck = Z · mean_ij g_kij exactly
    (article 001): the weights are read from the gradient, and the head is first checked to be
    of that kind, numerically, on the actual activations: the gradient must not vary over
    positions, and the head must be affine in A. Anything else is refused with a hint.
    """

    name = "cam"
    summary = "CAM: the linear classifier's weights, for a global-average-pool + linear head"
    formula = "ReLU(Σ_k W_ck A_k), W = the head's linear weights (= Z · mean_ij g_kij, checked)"
    uses_head = True
    requires_gap_linear_head = True

    def contributions(self, view: LayerView, rank: int) -> Tensor:
        check_gap_linear_head(view, rank)
        g, a = view.gradients[rank].float(), view.activations.float()
        z = a.shape[2] * a.shape[3]
        return g.mean(dim=(2, 3), keepdim=True) * z * a


def check_gap_linear_head(view: LayerView, rank: int, tolerance: float = 1e-3) -> None:
    """Raise LayerError unless y is Σ_k W_ck · mean_ij A_kij + b after this layer.

    An affine function of A whose gradient does not vary over positions is GAP + linear, so:
    g must be constant over positions at A, and y(A + D) - y(A) must equal Σ g·D for moves D
    of both signs: one that varies over positions, at A's scale, and channel-constant ones at 1,
    10 and 100 times the pooled features' scale — big enough that a ReLU or a norm after the
    pooling cannot stay in a linear stretch (averaging over positions shrinks the first kind).
    """
    import torch

    g = view.gradients[rank].float()
    a = view.activations.float()
    spread = (g - g.mean(dim=(2, 3), keepdim=True)).abs().amax()
    varies = bool(spread > tolerance * g.abs().amax() + 1e-12)
    targets = view.targets[:, rank : rank + 1]
    before = view.scores.float().gather(1, targets)[:, 0]
    index = torch.arange(a.shape[0], device=a.device)
    off_by = []
    for move in _probe_moves(a):
        after = view.head((a + move).to(view.activations.dtype), index).float()
        change = after.gather(1, targets)[:, 0] - before
        predicted = (g * move).sum(dim=(1, 2, 3))
        bound = tolerance * (g.abs() * move.abs()).sum(dim=(1, 2, 3)) + 1e-6
        off_by.append(bool(((change - predicted).abs() > bound).any()))
    if varies or any(off_by):
        what = "its gradient varies over positions" if varies else "it is not linear in A"
        raise LayerError(
            f"method='cam' needs a head that is global average pooling followed by linear "
            f"layers after layer '{view.layer}' (CAM's architecture), and this one is not "
            f"({what}); use method='gradcam', which equals CAM up to a factor on such heads "
            "and works for any head"
        )


def _probe_moves(a: Tensor) -> Tensor:
    """Seeded moves of A [B, C, h, w] for the affinity check: 7 of them, [7, B, C, h, w]."""
    import torch

    generator = torch.Generator().manual_seed(0)
    spatial = torch.randn(a.shape, generator=generator).to(a.device)
    spatial = spatial * a.flatten(1).std(dim=1).clamp(min=1e-6)[:, None, None, None]
    pooled = a.mean(dim=(2, 3))
    pooled_scale = (pooled.abs().mean(dim=1) + pooled.std(dim=1)).clamp(min=1e-6)
    direction = torch.randn(pooled.shape, generator=generator).to(a.device)
    flat = (direction * pooled_scale[:, None])[:, :, None, None].expand_as(a)
    moves = [spatial] + [sign * factor * flat for factor in (1.0, 10.0, 100.0) for sign in (1, -1)]
    return torch.stack(moves)


# -- guided backpropagation -------------------------------------------------------------------


@register_method
class GuidedBackprop(CamMethod):
    """Springenberg et al. 2015: ∂y/∂x with every ReLU passing only positive gradients back.

    The map is the gradient's magnitude per pixel (max over RGB), at input resolution; the
    signed RGB gradient is the guided image. Neither depends on the layer.
    """

    name = "guided-backprop"
    summary = "guided backpropagation: ∂y/∂x through ReLUs that pass positive gradients only"
    formula = "image: guided ∂y/∂x; map: max_RGB abs(guided ∂y/∂x), at input resolution"
    needs_gradients = False
    guided = True
    guided_layer_free = True
    supports_eigen_smooth = False

    def maps(self, view: LayerView) -> Tensor:
        import torch

        return torch.stack([g.float().abs().amax(dim=1) for g in view.guided_gradients], 1)

    def guided_images(self, guided_gradients: list[Tensor], maps: Tensor) -> Tensor:
        import torch

        return torch.stack([g.float() for g in guided_gradients], dim=1)


@register_method
class GuidedGradCAM(GradCAM):
    """Selvaraju et al. 2017: guided backpropagation times the upsampled Grad-CAM map."""

    name = "guided-gradcam"
    summary = "Guided Grad-CAM: guided backpropagation ⊙ bilinearly upsampled Grad-CAM"
    formula = "image: guided ∂y/∂x ⊙ up(Grad-CAM); map: Grad-CAM"
    guided = True

    def guided_images(self, guided_gradients: list[Tensor], maps: Tensor) -> Tensor:
        import torch
        import torch.nn.functional as F

        size = tuple(guided_gradients[0].shape[2:])
        upsampled = F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)
        gradients = torch.stack([g.float() for g in guided_gradients], dim=1)  # [B, K, 3, H, W]
        return gradients * upsampled[:, :, None]


# -- shared pieces -----------------------------------------------------------------------------


def kernel_principal_component(contributions: Tensor, kernel: str, gamma: object) -> Tensor:
    """[B, C, h, w] → [B, h, w]: each position's coordinate on the first kernel principal
    component of the positions' C-vectors (centred first, as pytorch-grad-cam does), scaled by
    √λ, its sign so that the value largest in size is positive (scikit-learn's KernelPCA with
    its svd_flip). An h·w × h·w eigenproblem per image."""
    import torch

    b, c, h, w = contributions.shape
    x = torch.nan_to_num(contributions.double()).reshape(b, c, h * w).transpose(1, 2)
    x = x - x.mean(dim=1, keepdim=True)
    g = 1.0 / c if gamma is None else float(gamma)  # type: ignore[arg-type]  # a checked number
    dots = x @ x.transpose(1, 2)
    if kernel == "linear":
        k = dots
    elif kernel == "poly":
        k = (g * dots + 1.0) ** 3
    elif kernel == "sigmoid":
        k = torch.tanh(g * dots + 1.0)
    elif kernel == "rbf":
        squares = dots.diagonal(dim1=1, dim2=2)
        k = torch.exp(-g * (squares[:, :, None] + squares[:, None, :] - 2 * dots).clamp(min=0))
    else:  # cosine
        unit = x / x.norm(dim=2, keepdim=True).clamp(min=1e-12)
        k = unit @ unit.transpose(1, 2)
    n = h * w
    centring = torch.eye(n, dtype=k.dtype, device=k.device) - 1.0 / n
    k = centring @ k @ centring  # the kernel of the centred features
    values, vectors = torch.linalg.eigh(k)
    vector = vectors[:, :, -1] * values[:, -1:].clamp(min=0).sqrt()  # [B, n]
    largest = vector.gather(1, vector.abs().argmax(dim=1, keepdim=True))
    return (vector * torch.where(largest < 0, -1.0, 1.0)).reshape(b, h, w).float()


def first_principal_component(contributions: Tensor) -> Tensor:
    """[B, C, h, w] → [B, h, w]: each position projected on the first principal component.

    The C-vectors of the h·w positions are centred and decomposed by SVD (as pytorch-grad-cam's
    get_2d_projection). An SVD's sign is arbitrary; ours is fixed so that the projection
    correlates positively with the plain channel sum Σ_k of the same contributions, so that
    smoothing never turns a method's evidence upside down.
    """
    import torch

    b, c, h, w = contributions.shape
    x = torch.nan_to_num(contributions.float()).reshape(b, c, h * w).transpose(1, 2)
    x = x - x.mean(dim=1, keepdim=True)  # [B, hw, C], centred over positions
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    projection = (x @ vh[:, 0, :, None])[..., 0]  # [B, hw]
    plain = x.sum(dim=2)  # the channel sum, centred
    sign = torch.where((projection * plain).sum(dim=1) < 0, -1.0, 1.0)
    return (projection * sign[:, None]).reshape(b, h, w)


def cost_note(cls: type[CamMethod]) -> str:
    """What a method costs beyond the one forward pass every method shares."""
    if cls.needs_full_forwards:
        return "C full forward passes per image, batched"
    if cls.guided and cls.needs_gradients:
        return "head-only backward, and one full backward to the pixels"
    if cls.guided:
        return "one full backward to the pixels"
    if cls.uses_head and not cls.needs_gradients:
        return "C head-only passes per image, batched"
    if cls.uses_head:
        return "head-only backward, and one head-only pass to check the head"
    if cls.needs_gradients:
        return "head-only backward"
    return "none"


def methods_table() -> str:
    """docs/methods.md's method table, from the registry (tests/test_docs.py keeps them equal)."""
    lines = ["| method | map | cost beyond one forward |", "|---|---|---|"]
    for name, cls in METHODS.items():
        lines.append(f"| `{name}` | {cls.formula} | {cost_note(cls)} |")
    return "\n".join(lines) + "\n"

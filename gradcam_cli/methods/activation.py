"""Channel weights from the activations alone, no gradients: FEM, and Random-CAM (a baseline)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import CamMethod, LayerView, MethodOption, register_method

if TYPE_CHECKING:
    from torch import Tensor


@register_method
class FEM(CamMethod):
    """Fuad et al. 2020, the Feature Explanation Method (pytorch-grad-cam's FEM): each channel
    weighted by the share of its positions where it exceeds its own mean by K_SIGMA standard
    deviations. No gradients: the same map for every class."""

    name = "fem"
    paper = "Fuad et al. 2020"
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
    paper = "a baseline (pytorch-grad-cam's)"
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


def seeded_normal(shape: tuple[int, ...], *key: int, std: float = 1.0) -> Tensor:
    """Gaussian noise N(0, std²) from a CPU generator seeded by `key` (a seed, a sample, …;
    mixed into one seed): the same values on every machine and device, and for every image
    of a batch. SS-CAM's mask noise and Smooth Grad-CAM++'s image noise."""
    import torch

    seed = 0
    for part in key:  # distinct keys → distinct seeds (for parts below 1,000,003)
        seed = (seed * 1_000_003 + part) % (1 << 63)
    generator = torch.Generator().manual_seed(seed)
    return std * torch.randn(shape, generator=generator)

"""Score-CAM's family: Score-CAM's masked forwards (perturbation.py), repeated.

SS-CAM adds Gaussian noise to each mask and averages the scores over noisy samples; IS-CAM
scales each mask by a growing factor and averages the scores over the steps (a path integral,
as Integrated Gradients). Both cost N times Score-CAM: N·C full forward passes per image.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .activation import seeded_normal
from .base import CamMethod, LayerView, MethodOption, register_method
from .perturbation import MaskTransform, masked_scores, softmax_weights

if TYPE_CHECKING:
    from torch import Tensor


@register_method
class SSCAM(CamMethod):
    """Wang et al. 2020, SS-CAM (Smoothed Score-CAM): Score-CAM with Gaussian noise
    N(0, σ²) added to each min-max scaled mask, at the input's resolution; a channel's score
    is averaged over N noisy samples before the softmax (torchcam's SSCAM; its defaults N = 35,
    σ = 2). The noise is seeded and drawn per sample and chunk of channels, the same for every
    image (`mask_noise`): a map does not depend on its batch, nor on the target."""

    name = "sscam"
    paper = "Wang et al. 2020 (SS-CAM)"
    summary = "SS-CAM: Score-CAM with noisy masks, scores averaged over samples (seeded)"
    formula = "ReLU(Σ_k w_k A_k), w = softmax_k mean_n y(x ⊙ (minmax(up(A_k)) + δ_n)), δ ~ N(0, σ²)"
    needs_gradients = False
    needs_full_forwards = True
    options = (
        MethodOption(
            "samples", 35, "sscam: noisy copies of each mask averaged", integer=True, least=1
        ),
        MethodOption("noise_std", 2.0, "sscam: the noise's standard deviation σ (masks in [0, 1])"),
        MethodOption("seed", 0, "sscam: the seed of its noise", integer=True),
    )

    def maps(self, view: LayerView) -> Tensor:
        samples = int(self.settings["samples"])  # type: ignore[call-overload]  # a checked int
        seed = int(self.settings["seed"])  # type: ignore[call-overload]
        std = float(self.settings["noise_std"])  # type: ignore[arg-type]  # a checked number

        def noisy(sample: int) -> MaskTransform:
            drawn: dict[tuple[int, ...], Tensor] = {}  # the last chunk's draw, for every image

            def add(masks: Tensor, start: int) -> Tensor:
                key = (start, *masks.shape)
                if key not in drawn:
                    drawn.clear()
                    noise = mask_noise(tuple(masks.shape), seed, sample, start, std)
                    drawn[key] = noise.to(masks.device)
                return masks + drawn[key]

            return add

        return self.combine_weighted(
            view, softmax_weights(view, _mean_scores(view, noisy, samples))
        )


def mask_noise(shape: tuple[int, ...], seed: int, sample: int, start: int, std: float) -> Tensor:
    """SS-CAM's noise for the masks [n, H, W] of channels start … start + n − 1 in sample
    `sample`: a function of these alone, so every image of a batch gets the same."""
    return seeded_normal(shape, seed, sample, start, std=std)


@register_method
class ISCAM(CamMethod):
    """Naidu et al. 2020, IS-CAM (Integrated Score-CAM): Score-CAM's masks scaled by
    c_n = Σ_{i≤n} i/N = n(n + 1) / 2N at steps n = 1 … N, each channel's score averaged over
    the steps before the softmax. As torchcam's ISCAM computes it (its docstring's sum starts at
    i = 0, one step behind its code); deterministic."""

    name = "iscam"
    paper = "Naidu et al. 2020"
    summary = "IS-CAM: Score-CAM with masks scaled along N steps, scores averaged"
    formula = "ReLU(Σ_k w_k A_k), w = softmax_k mean_n y(x ⊙ c_n minmax(up(A_k))), c_n = n(n+1)/2N"
    needs_gradients = False
    needs_full_forwards = True
    options = (MethodOption("samples", 10, "iscam: integration steps N", integer=True, least=1),)

    def maps(self, view: LayerView) -> Tensor:
        steps = int(self.settings["samples"])  # type: ignore[call-overload]  # a checked int

        def scaled(n: int) -> MaskTransform:
            factor = (n + 1) * (n + 2) / (2 * steps)  # step n + 1
            return lambda masks, start: factor * masks

        scores = _mean_scores(view, scaled, steps)  # [B, C, num_classes]
        return self.combine_weighted(view, softmax_weights(view, scores))


def _mean_scores(view: LayerView, transform: Callable[[int], MaskTransform], n: int) -> Tensor:
    """[B, C, num_classes]: masked_scores with transform(i), averaged over i = 0 … n − 1."""
    total = masked_scores(view, transform(0))
    for i in range(1, n):
        total += masked_scores(view, transform(i))
    return total / n

"""Smooth Grad-CAM++: Grad-CAM++ with the gradient's powers averaged over noisy copies of the
input (SmoothGrad's noise). Each copy is one more full forward and, per target, one backward
through the head only: the split holds per sample (`LayerView.gradients_at`, engine.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .activation import seeded_normal
from .base import CamMethod, LayerView, MethodOption, register_method

if TYPE_CHECKING:
    from torch import Tensor


@register_method
class SmoothGradCAMPlusPlus(CamMethod):
    """Omeiza et al. 2019, Smooth Grad-CAM++: Grad-CAM++'s weights (Chattopadhay et al.'s
    eq. 19, our gradcam++) on the gradient's powers averaged over N copies of the image plus
    noise N(0, σ²), m_p = mean_n gᵖ, and the image's own A (torchcam's SmoothGradCAMpp; its
    defaults N = 4, σ = 0.3). The noise is seeded and drawn per sample, the same for every
    image of a batch (`image_noise`) and every target: a map does not depend on its batch.

    torchcam's own differs in three ways, each an accident of its code rather than the paper
    (tests/test_peers.py shows they are the only differences): it combines the last noisy
    copy's A and ReLU(g) instead of the image's A and ReLU(m1), and its denominator sums
    m3 ⊙ A over positions (Σ_ab m3_ab A_ab) instead of m3_ij Σ_ab A_ab."""

    name = "smoothgradcam++"
    paper = "Omeiza et al. 2019"
    summary = "Smooth Grad-CAM++: Grad-CAM++ on gradients averaged over noisy copies (seeded)"
    formula = (
        "ReLU(Σ_k w_k A_k), w_k = Σ_ij a_kij ReLU(m1_kij), a = m2 / (2 m2 + m3 Σ_ab A_kab), "
        "m_p = mean_n g(x + δ_n)^p, δ ~ N(0, σ²)"
    )
    needs_gradients = False  # the image's own gradient is not used: the noisy copies' are
    reruns_with_gradients = True
    options = (
        MethodOption(
            "samples",
            4,
            "smoothgradcam++: noisy copies of the image averaged",
            integer=True,
            least=1,
        ),
        MethodOption("noise_std", 0.3, "smoothgradcam++: the noise's standard deviation σ"),
        MethodOption("seed", 0, "smoothgradcam++: the seed of its noise", integer=True),
    )

    def maps(self, view: LayerView) -> Tensor:
        import torch

        samples = int(self.settings["samples"])  # type: ignore[call-overload]  # a checked int
        seed = int(self.settings["seed"])  # type: ignore[call-overload]
        std = float(self.settings["noise_std"])  # type: ignore[arg-type]  # a checked number
        images = view.images
        assert view.gradients_at is not None, "the engine hands it (reruns_with_gradients)"
        per_sample = [  # N × K × g [B, C, h, w], one forward and K head-only backwards each
            view.gradients_at(images + image_noise(images, seed, n, std))[1] for n in range(samples)
        ]
        a = view.activations.float()
        ranks = range(view.targets.shape[1])
        weights = [_weights(a, torch.stack([g[r].float() for g in per_sample])) for r in ranks]
        return self.combine_weighted(view, torch.stack(weights, 2))  # [B, C, K]


def _weights(a: Tensor, g: Tensor) -> Tensor:
    """Channel weights [B, C] from the image's A [B, C, h, w] and one target's gradients on N
    noisy copies, g [N, B, C, h, w]: Grad-CAM++'s, on the averaged powers m_p = mean_n gᵖ."""
    m1, m2, m3 = g.mean(dim=0), (g * g).mean(dim=0), (g * g * g).mean(dim=0)
    alpha = m2 / (2 * m2 + a.sum(dim=(2, 3), keepdim=True) * m3 + 1e-6)
    alpha = alpha * (m2 != 0)  # no gradient in any copy, no weight (as gradcam++)
    return (alpha * m1.clamp(min=0)).sum(dim=(2, 3))


def image_noise(images: Tensor, seed: int, sample: int, std: float) -> Tensor:
    """Smooth Grad-CAM++'s noise for sample `sample`, [1, 3, H, W] on the images' device: a
    function of the seed, the sample and the image size only, so every image gets the same."""
    noise = seeded_normal((1, *images.shape[1:]), seed, sample, std=std)
    return noise.to(images.device, images.dtype)

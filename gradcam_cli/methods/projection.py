"""Projections on the first (kernel) principal component, shared by the eigen methods and by
`eigen_smooth`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


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

"""Non-negative matrix factorization in torch, for Deep Feature Factorization (concepts.py).

X [n, m] ≥ 0 ≈ W [n, k] · H [k, m], minimising the Frobenius error ‖X − WH‖², by coordinate
descent over the factors' columns (HALS: Cichocki & Phan 2009). The definitions are
scikit-learn's `NMF(init="random", solver="cd", shuffle=False)`, the solver pytorch-grad-cam's
DFF calls, so that the same seed gives the same factors:

- init: |N(0, 1)| · sqrt(mean(X) / k), drawn with NumPy's `RandomState(seed)`, H first, then
  W (on the CPU, whatever the device: the start does not depend on it);
- one iteration: a sweep over W's columns (each column the exact minimiser with the others
  fixed, clipped at 0), then one over H's rows;
- stop when the sweep's projected-gradient size, relative to the first sweep's, is at most
  `tol`, or after `max_iter` sweeps.

`solve_h` finds H for new columns of X with W fixed (scikit-learn's `transform`: H starts at
0 and only H is swept), for positions that were not part of the fit.

torch only: no scikit-learn at run time (the tests compare with it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Factors", "nmf", "solve_h", "random_init", "relative_error"]

MAX_ITER = 200
TOL = 1e-4


@dataclass(frozen=True)
class Factors:
    w: torch.Tensor  # [n, k]
    h: torch.Tensor  # [k, m]
    iterations: int
    converged: bool  # the stopping rule was met before max_iter


def random_init(x: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's init='random': (W [n, k], H [k, m]) = |N(0, 1)| · sqrt(mean(X) / k)."""
    n, m = x.shape
    scale = float(np.sqrt(float(x.float().mean()) / k))
    rng = np.random.RandomState(seed)
    h = np.abs(scale * rng.standard_normal(size=(k, m)).astype(np.float32))
    w = np.abs(scale * rng.standard_normal(size=(n, k)).astype(np.float32))
    return torch.from_numpy(w).to(x.device, x.dtype), torch.from_numpy(h).to(x.device, x.dtype)


def nmf(
    x: torch.Tensor, k: int, *, seed: int = 0, max_iter: int = MAX_ITER, tol: float = TOL
) -> Factors:
    """Factor X [n, m] ≥ 0 into W [n, k] · H [k, m] (module docstring)."""
    w, h = random_init(x, k, seed)
    ht = h.T.contiguous()  # [m, k]: both sweeps update columns of a tall matrix
    first = None
    for iteration in range(1, max_iter + 1):
        violation = _sweep(x, w, ht) + _sweep(x.T, ht, w)
        first = violation if first is None else first
        if first == 0 or violation / first <= tol:
            return Factors(w, ht.T.contiguous(), iteration, True)
    return Factors(w, ht.T.contiguous(), max_iter, max_iter == 0)


def solve_h(
    x: torch.Tensor, w: torch.Tensor, *, max_iter: int = MAX_ITER, tol: float = TOL
) -> torch.Tensor:
    """H [k, m] ≥ 0 minimising ‖X − WH‖ for a fixed W (module docstring)."""
    ht = torch.zeros(x.shape[1], w.shape[1], device=x.device, dtype=x.dtype)
    first = None
    for _ in range(max_iter):
        violation = _sweep(x.T, ht, w)
        first = violation if first is None else first
        if first == 0 or violation / first <= tol:
            break
    return ht.T.contiguous()


def _sweep(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    """One pass of coordinate descent over the columns of A in X ≈ A Bᵀ (A updated in place);
    returns the size of the projected gradient met on the way (scikit-learn's violation).

    With the other columns fixed, column t's exact minimiser is A[:, t] − grad / (BᵀB)[t, t],
    clipped at 0, where grad = A (BᵀB)[:, t] − (X B)[:, t]; the rows of A are independent, so
    the column is updated at once."""
    gram = b.T @ b  # [k, k]
    xb = x @ b  # [n, k]
    violation = torch.zeros((), device=x.device, dtype=x.dtype)  # as scikit-learn sums it
    for t in range(a.shape[1]):
        grad = a @ gram[:, t] - xb[:, t]
        projected = torch.where(a[:, t] == 0, grad.clamp(max=0), grad)
        violation += projected.abs().sum()
        # A column of B that is all zero leaves column t as it is (its curvature is 0).
        step = torch.where(gram[t, t] != 0, grad / gram[t, t], torch.zeros_like(grad))
        a[:, t] = (a[:, t] - step).clamp(min=0)
    return float(violation)  # one synchronisation per sweep


def relative_error(x: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> float:
    """‖X − WH‖_F / ‖X‖_F (0 for an all-zero X)."""
    norm = float(torch.linalg.norm(x.cpu().double()))  # float64 on the CPU (MPS has none)
    if norm == 0:
        return 0.0
    return float(torch.linalg.norm((x - w @ h).cpu().double())) / norm

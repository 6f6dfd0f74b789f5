"""Distances between two sets of samples: sliced Wasserstein and unbiased MMD^2.

Both take ``x`` of shape ``(n, ...)`` and ``y`` of shape ``(m, ...)`` (flattened per sample)
and return a Python float.  Use them where pathwise errors are meaningless (multimodal data,
images): compare a sampler's output with exact samples or with a reference sampler.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

__all__ = ["sliced_wasserstein", "mmd2_unbiased", "median_bandwidth"]


def _flat_pair(x: torch.Tensor, y: torch.Tensor, min_rows: int):
    for name, v in (("x", x), ("y", y)):
        if not isinstance(v, torch.Tensor) or v.ndim < 1:
            raise TypeError(f"{name}: expected a tensor of shape (n, ...), got {type(v).__name__}")
        if v.shape[0] < min_rows:
            raise ValueError(f"{name}: expected at least {min_rows} samples, got {v.shape[0]}")
    x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x, y: samples of different sizes, {x.shape[1]} and {y.shape[1]} entries")
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    return x.to(dtype), y.to(device=x.device, dtype=dtype)


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    projections: int = 256,
    p: float = 2.0,
    generator: Optional[torch.Generator] = None,
) -> float:
    """Sliced p-Wasserstein distance, (E_theta W_p^p(<theta, X>, <theta, Y>))^(1/p), theta uniform on the sphere.

    The expectation is a Monte Carlo mean over ``projections`` random directions (drawn from
    ``generator``).  One-dimensional W_p compares sorted projections; sets of different sizes
    are compared through their empirical quantile functions on a common grid.
    """
    x, y = _flat_pair(x, y, 1)
    if isinstance(projections, bool) or not isinstance(projections, int) or projections < 1:
        raise ValueError(f"projections: expected an int >= 1, got {projections!r}")
    if not p >= 1:
        raise ValueError(f"p: expected p >= 1, got {p}")
    theta = torch.randn((x.shape[1], projections), generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, _ = (x @ theta).sort(dim=0)
    py, _ = (y @ theta).sort(dim=0)
    if px.shape[0] != py.shape[0]:
        n = max(px.shape[0], py.shape[0])
        q = (torch.arange(n, dtype=x.dtype, device=x.device) + 0.5) / n
        px, py = torch.quantile(px, q, dim=0), torch.quantile(py, q, dim=0)
    return float((px - py).abs().pow(p).mean() ** (1.0 / p))


def median_bandwidth(x: torch.Tensor, y: torch.Tensor) -> float:
    """The median heuristic: median Euclidean distance between distinct points of the pooled set."""
    x, y = _flat_pair(x, y, 1)
    z = torch.cat([x, y])
    d = torch.cdist(z, z)
    iu = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
    return float(d[iu[0], iu[1]].median())


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, *, bandwidth: Union[None, float, Sequence[float]] = None) -> float:
    """Unbiased estimate of MMD^2 with the Gaussian kernel k(a, b) = exp(-|a - b|^2 / (2 bandwidth^2)).

    MMD^2 = E k(X, X') + E k(Y, Y') - 2 E k(X, Y); the estimate drops the diagonal terms, so
    its expectation is exactly MMD^2 (and it can be negative).  ``bandwidth``: a number, a
    sequence (the kernels are summed), or None for :func:`median_bandwidth` of the pooled set
    (which makes the estimate data-dependent, so only approximately unbiased).
    """
    x, y = _flat_pair(x, y, 2)
    if bandwidth is None:
        bandwidth = median_bandwidth(x, y)
    bws = [float(bandwidth)] if isinstance(bandwidth, (int, float)) else [float(b) for b in bandwidth]
    if not bws or any(not (math.isfinite(b) and b > 0) for b in bws):
        raise ValueError(f"bandwidth: expected positive finite numbers, got {bandwidth!r}")
    n, m = x.shape[0], y.shape[0]
    dxx, dyy, dxy = torch.cdist(x, x).pow(2), torch.cdist(y, y).pow(2), torch.cdist(x, y).pow(2)
    total = 0.0
    for b in bws:
        kxx, kyy, kxy = (torch.exp(-d / (2 * b * b)) for d in (dxx, dyy, dxy))
        total += float(
            (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
            + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
            - 2 * kxy.mean()
        )
    return total

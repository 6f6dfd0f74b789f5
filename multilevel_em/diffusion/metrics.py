"""Distances between two sets of samples: sliced Wasserstein, unbiased MMD^2, and the Frechet distance of two
feature sets with its bootstrap.

Both take ``x`` of shape ``(n, ...)`` and ``y`` of shape ``(m, ...)`` (flattened per sample)
and return a Python float.  Use them where pathwise errors are meaningless (multimodal data,
images): compare a sampler's output with exact samples or with a reference sampler.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "sliced_wasserstein",
    "mmd2_unbiased",
    "median_bandwidth",
    "frechet_gaussian",
    "frechet_distance",
    "bootstrap_counts",
    "frechet_bootstrap",
    "percentile_ci",
]


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


def _sqrt_psd(a: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigh; negative rounding clipped to 0)."""
    w, v = torch.linalg.eigh((a + a.transpose(-1, -2)) / 2)
    return (v * w.clamp(min=0).sqrt().unsqueeze(-2)) @ v.transpose(-1, -2)


def frechet_gaussian(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> torch.Tensor:
    """Fréchet (2-Wasserstein squared) distance between N(mu1, cov1) and N(mu2, cov2).

    ``|mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1^1/2 cov2 cov1^1/2)^1/2)``, the square roots by
    eigh (so exact for any symmetric PSD matrices, no complex parts as with ``scipy.linalg.sqrtm``).

    Args:
        mu1, mu2: means, shape (d,) or batched (B, d).
        cov1, cov2: covariances, shape (d, d) or batched (B, d, d); symmetric PSD.

    Returns: a float64 tensor, shape () or (B,), in squared feature units. Raises ValueError on shape
    mismatch and FloatingPointError if the inputs are not finite.
    """
    mu1, mu2, cov1, cov2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, mu2, cov1, cov2))
    d = mu1.shape[-1]
    if mu2.shape[-1] != d or cov1.shape[-2:] != (d, d) or cov2.shape[-2:] != (d, d):
        raise ValueError(
            f"frechet: expected means (..., d) and covariances (..., d, d) with one d, got "
            f"{tuple(mu1.shape)}, {tuple(cov1.shape)}, {tuple(mu2.shape)}, {tuple(cov2.shape)}"
        )
    if not all(bool(torch.isfinite(t).all()) for t in (mu1, mu2, cov1, cov2)):
        raise FloatingPointError("frechet: the means or covariances are NaN or Inf")
    r = _sqrt_psd(cov1)
    cross = torch.linalg.eigvalsh(r @ cov2 @ r).clamp(min=0).sqrt().sum(-1)
    diag = lambda c: c.diagonal(dim1=-2, dim2=-1).sum(-1)  # noqa: E731
    return (mu1 - mu2).pow(2).sum(-1) + diag(cov1) + diag(cov2) - 2 * cross


def frechet_distance(fx: torch.Tensor, fy: torch.Tensor) -> float:
    """Fréchet distance of two feature sets (n, d), (m, d): Gaussians fitted by the sample mean and the
    unbiased (n - 1) covariance, then :func:`frechet_gaussian`. Biased upward at finite n (the fitted
    covariances are noisy), so compare values at equal sample sizes. Needs n, m >= 2."""
    fx, fy = fx.double(), fy.double()
    if fx.ndim != 2 or fy.ndim != 2 or fx.shape[1] != fy.shape[1]:
        raise ValueError(
            f"frechet_distance: expected (n, d) and (m, d) features, got {tuple(fx.shape)} and {tuple(fy.shape)}"
        )
    if fx.shape[0] < 2 or fy.shape[0] < 2:
        raise ValueError(
            f"frechet_distance: expected at least 2 samples in each set, got {fx.shape[0]} and {fy.shape[0]}"
        )
    out = float(frechet_gaussian(fx.mean(0), torch.cov(fx.T), fy.mean(0), torch.cov(fy.T)))
    if out != out:
        raise FloatingPointError("frechet_distance: NaN (are the features finite?)")
    return out


# ---------------------------------------------------------------------------- bootstrap over samples


def bootstrap_counts(n: int, replicates: int, seed: int = 0) -> torch.Tensor:
    """Multiplicities of ``replicates`` bootstrap resamples of ``n`` samples, float64 (replicates, n), each
    row summing to n (row b: how often sample i was drawn, with replacement). One seeded draw, so runs
    that share their samples' noise can share the resamples: differences of their replicates are
    paired bootstrap replicates of the difference."""
    if n < 2 or replicates < 1:
        raise ValueError(f"bootstrap: expected n >= 2 samples and >= 1 replicate, got n={n}, replicates={replicates}")
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, n, (replicates, n), generator=g)
    counts = torch.zeros(replicates, n, dtype=torch.float64)
    counts.scatter_add_(1, idx, torch.ones(replicates, n, dtype=torch.float64))
    return counts


def frechet_bootstrap(fx: torch.Tensor, fy: torch.Tensor, counts: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """:func:`frechet_distance` of each bootstrap resample of ``fx`` (rows of ``counts``, (B, n)) against
    the whole of ``fy`` (fixed). Returns float64 (B,); ``chunk`` resamples at a time bound the memory
    (chunk x n x d doubles)."""
    fx, fy = fx.double(), fy.double()
    n = fx.shape[0]
    if counts.shape[-1] != n:
        raise ValueError(f"frechet_bootstrap: counts are for {counts.shape[-1]} samples, the features have {n}")
    mu_y, cov_y = fy.mean(0), torch.cov(fy.T)
    out = []
    for c in torch.split(counts.double(), chunk):
        mu = c @ fx / n  # (b, d)
        xw = c.sqrt().unsqueeze(-1) * fx  # (b, n, d)
        second = xw.transpose(1, 2) @ xw / n
        cov = (second - mu.unsqueeze(2) * mu.unsqueeze(1)) * (n / (n - 1))
        out.append(frechet_gaussian(mu, cov, mu_y.expand_as(mu), cov_y.expand_as(cov)))
    return torch.cat(out)


def percentile_ci(replicates: torch.Tensor, level: float = 0.95, center: Optional[float] = None) -> Tuple[float, float]:
    """The percentile-method interval of bootstrap ``replicates`` (B,): their (1 - level)/2 and
    (1 + level)/2 quantiles (linear interpolation). With ``center`` (the point estimate), the replicates
    are first shifted so that their mean is ``center``: the bootstrap's bias estimate
    ``mean(replicates) - center`` is removed (FD's replicates sit above the point estimate, since a
    resample repeats samples and the plug-in FD's finite-n bias grows). FloatingPointError if any
    replicate is NaN."""
    r = torch.as_tensor(replicates, dtype=torch.float64)
    if not bool(torch.isfinite(r).all()):
        raise FloatingPointError("bootstrap: a replicate is NaN or Inf")
    if center is not None:
        r = r - (r.mean() - float(center))
    q = torch.quantile(r, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(q[0]), float(q[1])

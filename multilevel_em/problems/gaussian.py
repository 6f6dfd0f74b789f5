"""Diffusion problems with an exact eps: Gaussian data, Gaussian mixtures, and synthetic ladders over them.

Under a VP schedule (:class:`~multilevel_em.diffusion.VPSchedule`) data x0 ~ sum_k w_k N(m_k, S_k)
has the noised marginal

    p_t(x) = sum_k w_k N(x; alpha m_k, alpha^2 S_k + sigma^2 I),     alpha^2 = alpha_bar(t), sigma^2 = 1 - alpha^2,

so the exact noise prediction eps(x, t) = -sigma grad log p_t(x) is the responsibility-weighted
sum of the components' sigma (alpha^2 S_k + sigma^2 I)^-1 (x - alpha m_k).  Each S_k is
diagonalised once (S_k = U_k diag(lambda_k) U_k^T), so eps costs O(K d^2) per sample.  For
one Gaussian the probability-flow ODE is linear and its flow map is known in closed form
(:meth:`GaussianProblem.ode_flow`): a pathwise reference for the deterministic samplers.

:func:`perturbed_ladder` turns any exact eps into a synthetic ladder: level l adds a smooth
random perturbation of RMS size ``amplitude * 2^-l`` and costs ``cost_ratio^l``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from ..diffusion.schedule import VPSchedule, as_time
from ..engine import Ladder

__all__ = [
    "GaussianMixtureProblem",
    "GaussianProblem",
    "gaussian",
    "gaussian_mixture",
    "perturbed_ladder",
    "problem_from_spec",
]


class GaussianMixtureProblem:
    """Data x0 ~ sum_k w_k N(means[k], covs[k]) in R^d, with the exact eps under ``schedule``.

    Args:
        weights: (K,) positive mixture weights (normalised here).
        means: (K, d) component means.
        covs: (K, d, d) symmetric positive definite component covariances.
        schedule: the VP schedule (default ``VPSchedule.linear()``).
        dtype: dtype of the parameters, of :meth:`sample` and of the computations.

    ``problem.eps`` is an eps model ``(x, t) -> eps`` (x: (batch, d); t: float or (batch,)).
    """

    def __init__(self, weights, means, covs, schedule: Optional[VPSchedule] = None, *, dtype=torch.float64):
        means = torch.as_tensor(means, dtype=dtype)
        covs = torch.as_tensor(covs, dtype=dtype)
        weights = torch.as_tensor(weights, dtype=dtype)
        if means.ndim != 2:
            raise ValueError(f"means: expected shape (K, d), got {tuple(means.shape)}")
        K, d = means.shape
        if covs.shape != (K, d, d):
            raise ValueError(f"covs: expected shape {(K, d, d)}, got {tuple(covs.shape)}")
        if weights.shape != (K,) or not bool((weights > 0).all()):
            raise ValueError(f"weights: expected {K} positive weights, got {weights.tolist()}")
        if not torch.allclose(covs, covs.transpose(1, 2)):
            raise ValueError("covs: expected symmetric matrices")
        lam, U = torch.linalg.eigh(covs)
        if not bool((lam > 0).all()):
            raise ValueError("covs: expected positive definite matrices")
        self.weights = weights / weights.sum()
        self.means, self.covs = means, covs
        self.eigvals, self.eigvecs = lam, U  # (K, d), (K, d, d): covs[k] = U_k diag(lam_k) U_k^T
        self.schedule = schedule if schedule is not None else VPSchedule.linear()
        self.dim, self.components, self.dtype = d, K, dtype

    def sample(self, n: int, *, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n exact samples of the data, shape (n, d)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, self.dim), generator=generator, dtype=self.dtype)
        return self.means[k] + torch.einsum("nde,ne->nd", self.eigvecs[k], self.eigvals[k].sqrt() * z)

    def _parts(self, x: torch.Tensor, t):
        """Eigen-coordinates y = U^T (x - alpha m) (batch, K, d), variances (., K, d), sigma (batch or ())."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x: expected shape (batch, {self.dim}), got {tuple(x.shape)}")
        t = as_time(t)
        ab = self.schedule.alpha_bar(t).to(x)
        sigma = self.schedule.sigma(t).to(x)
        a = ab.sqrt()
        if t.ndim == 1:
            ab, a = ab.view(-1, 1, 1), a.view(-1, 1, 1)
        means, U, lam = self.means.to(x), self.eigvecs.to(x), self.eigvals.to(x)
        z = x[:, None, :] - a * means  # (batch, K, d)
        y = torch.einsum("bkd,kde->bke", z, U)
        var = ab * lam + (1 - ab)  # eigenvalues of alpha^2 S_k + sigma^2 I
        return y, var, sigma, U

    def log_prob(self, x: torch.Tensor, t) -> torch.Tensor:
        """log p_t(x), shape (batch,)."""
        y, var, _, _ = self._parts(x, t)
        var = var.expand_as(y)
        log_n = -0.5 * ((y * y / var) + var.log() + math.log(2 * math.pi)).sum(-1)
        return torch.logsumexp(self.weights.to(x).log() + log_n, dim=1)

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """grad_x log p_t(x), shape (batch, d)."""
        y, var, _, U = self._parts(x, t)
        var = var.expand_as(y)
        w = y / var
        log_n = -0.5 * ((y * w) + var.log()).sum(-1)
        r = torch.softmax(self.weights.to(x).log() + log_n, dim=1)  # responsibilities (batch, K)
        return -torch.einsum("bk,bke,kde->bd", r, w, U)

    def eps(self, x: torch.Tensor, t) -> torch.Tensor:
        """The exact noise prediction -sigma(t) grad log p_t(x), shape (batch, d)."""
        sigma = self.schedule.sigma(as_time(t)).to(x)
        s = self.score(x, t)
        return -(sigma.view(-1, 1) if sigma.ndim == 1 else sigma) * s

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        return self.eps(x, t)


class GaussianProblem(GaussianMixtureProblem):
    """Gaussian data x0 ~ N(mean, cov): a one-component mixture with closed-form marginals and ODE flow."""

    def __init__(self, mean, cov, schedule: Optional[VPSchedule] = None, *, dtype=torch.float64):
        mean = torch.as_tensor(mean, dtype=dtype)
        cov = torch.as_tensor(cov, dtype=dtype)
        super().__init__(torch.ones(1, dtype=dtype), mean[None], cov[None], schedule, dtype=dtype)
        self.mean, self.cov = mean, cov

    def marginal(self, t: float):
        """Mean and covariance of x_t: (alpha m, alpha^2 S + sigma^2 I)."""
        ab = float(self.schedule.alpha_bar(t))
        return math.sqrt(ab) * self.mean, ab * self.cov + (1 - ab) * torch.eye(self.dim, dtype=self.dtype)

    def ode_flow(self, x: torch.Tensor, t_from: float, t_to: float) -> torch.Tensor:
        """Exact probability-flow ODE map from t_from to t_to, x (batch, d).

        The ODE is linear with coefficients diagonal in S's eigenbasis, so it carries
        x - alpha m to Sigma_to^(1/2) Sigma_from^(-1/2) (x - alpha m) with Sigma = alpha^2 S + sigma^2 I.
        """
        U, lam = self.eigvecs[0].to(x), self.eigvals[0].to(x)
        a0, a1 = (float(self.schedule.alpha_bar(s)) for s in (t_from, t_to))
        scale = ((a1 * lam + 1 - a1) / (a0 * lam + 1 - a0)).sqrt()
        m = self.mean.to(x)
        y = (x - math.sqrt(a0) * m) @ U
        return math.sqrt(a1) * m + (y * scale) @ U.T


def _random_cov(dim: int, lo: float, hi: float, g: torch.Generator, dtype) -> torch.Tensor:
    """A random covariance with eigenvalues log-uniform in [lo, hi] and a random eigenbasis."""
    q, r = torch.linalg.qr(torch.randn((dim, dim), generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    lam = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(dim, generator=g, dtype=torch.float64))
    cov = (q * lam) @ q.T
    return (0.5 * (cov + cov.T)).to(dtype)


def gaussian(
    dim: int = 2,
    *,
    schedule: Optional[VPSchedule] = None,
    seed: int = 0,
    mean_scale: float = 0.5,
    eig_range: Sequence[float] = (0.05, 1.0),
    dtype=torch.float64,
) -> GaussianProblem:
    """A random Gaussian N(m, S) in R^dim: m ~ N(0, mean_scale^2 I), S with eigenvalues log-uniform in eig_range."""
    _check_dim(dim)
    g = torch.Generator().manual_seed(seed)
    mean = mean_scale * torch.randn(dim, generator=g, dtype=torch.float64)
    cov = _random_cov(dim, float(eig_range[0]), float(eig_range[1]), g, torch.float64)
    return GaussianProblem(mean.to(dtype), cov.to(dtype), schedule, dtype=dtype)


def gaussian_mixture(
    dim: int = 2,
    components: int = 4,
    *,
    schedule: Optional[VPSchedule] = None,
    seed: int = 0,
    radius: float = 1.0,
    component_std: float = 0.2,
    dtype=torch.float64,
) -> GaussianMixtureProblem:
    """A random mixture in R^dim (dim 2..64 intended): means at distance ``radius`` from 0 in random
    directions, random full covariances with standard deviations in [0.5, 1] * component_std,
    weights uniform on [0.5, 1] before normalising."""
    _check_dim(dim)
    if isinstance(components, bool) or not isinstance(components, int) or components < 1:
        raise ValueError(f"components: expected an int >= 1, got {components!r}")
    g = torch.Generator().manual_seed(seed)
    means = torch.randn((components, dim), generator=g, dtype=torch.float64)
    means = radius * means / means.norm(dim=1, keepdim=True)
    var_lo, var_hi = (0.5 * component_std) ** 2, component_std**2
    covs = torch.stack([_random_cov(dim, var_lo, var_hi, g, torch.float64) for _ in range(components)])
    weights = 0.5 + 0.5 * torch.rand(components, generator=g, dtype=torch.float64)
    return GaussianMixtureProblem(weights.to(dtype), means.to(dtype), covs.to(dtype), schedule, dtype=dtype)


def problem_from_spec(spec: dict, schedule: Optional[VPSchedule] = None) -> GaussianMixtureProblem:
    """The problem that :func:`multilevel_em.diffusion.mlp.problem_spec` described (kind, weights, means, covs)."""
    if spec.get("kind") == "gaussian":
        return GaussianProblem(spec["means"][0], spec["covs"][0], schedule)
    if spec.get("kind") == "mixture":
        return GaussianMixtureProblem(spec["weights"], spec["means"], spec["covs"], schedule)
    raise ValueError(f"spec: expected kind 'gaussian' or 'mixture', got {spec.get('kind')!r}")


def _check_dim(dim) -> None:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim: expected an int >= 1, got {dim!r}")


class _PerturbedEps:
    """eps(x, t) + amp * sqrt(2) sin(x Omega^T + nu t + phi): a picklable ladder level."""

    def __init__(self, eps: Callable, omega, nu, phi, amp: float, name: str):
        self.eps, self.omega, self.nu, self.phi, self.amp = eps, omega, nu, phi, amp
        self.__name__ = name

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        tt = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        tt = tt.view(-1, 1) if tt.ndim else tt
        arg = x @ self.omega.to(x).T + self.nu.to(x) * tt + self.phi.to(x)
        return self.eps(x, t) + (self.amp * math.sqrt(2.0)) * torch.sin(arg)


def perturbed_ladder(
    eps: Callable,
    dim: int,
    *,
    levels: int = 4,
    seed: int = 0,
    amplitude: float = 1.0,
    frequency: float = 1.0,
    costs: Optional[Sequence[float]] = None,
    cost_ratio: float = 4.0,
    dtype=torch.float64,
) -> Ladder:
    """A synthetic ladder of eps models around an exact ``eps`` (x: (batch, dim)).

    Level l = 1..levels is eps + amplitude 2^-l psi_l with psi_l(x, t)_i = sqrt(2) sin(<w_li, x> + nu_li t + phi_li),
    w_li ~ N(0, frequency^2 / dim I), nu_li ~ N(0, frequency^2), phi_li ~ U[0, 2 pi): a smooth random
    function of RMS 1 per coordinate (over the phases), independent across levels.  So the
    error of level l is about amplitude 2^-l and the level differences about sqrt(5) amplitude 2^-l.
    Costs: ``costs`` or cost_ratio^l; error 2^-l at cost cost_ratio^l is gamma = log2(cost_ratio)
    (2 for the default 4; pass cost_ratio = 2^gamma for the HTMC regime gamma > 2).
    """
    _check_dim(dim)
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels: expected an int >= 1, got {levels!r}")
    g = torch.Generator().manual_seed(seed)
    models = []
    for l in range(1, levels + 1):
        omega = frequency / math.sqrt(dim) * torch.randn((dim, dim), generator=g, dtype=torch.float64)
        nu = frequency * torch.randn(dim, generator=g, dtype=torch.float64)
        phi = 2 * math.pi * torch.rand(dim, generator=g, dtype=torch.float64)
        models.append(_PerturbedEps(eps, omega.to(dtype), nu.to(dtype), phi.to(dtype), amplitude * 2.0**-l, f"eps{l}"))
    if costs is None:
        costs = [float(cost_ratio) ** l for l in range(1, levels + 1)]
    return Ladder(models, costs, names=[f"level {l}" for l in range(1, levels + 1)])

"""The exact-eps problems (multilevel_em.problems.gaussian): exact noise predictions, samplers, flows and
perturbed ladders. Fixed seeds; each statistical check states its tolerance."""

from __future__ import annotations

import pytest
import torch
from conftest import F64, assert_moments

from multilevel_em import Ladder
from multilevel_em.problems import gaussian, gaussian_mixture, perturbed_ladder


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dim,components", [(3, 1), (2, 5), (64, 4)])
def test_exact_eps_is_minus_sigma_grad_log_density(dim, components):
    P = gaussian(dim, seed=2) if components == 1 else gaussian_mixture(dim, components, seed=2)
    x = torch.randn(6, dim, generator=gen(2), dtype=F64)
    for t in (1e-3, 0.3, 1.0, torch.linspace(0.1, 0.9, 6, dtype=F64)):
        xx = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(P.log_prob(xx, t).sum(), xx)
        sigma = P.schedule.sigma(t)
        sigma = sigma[:, None] if sigma.ndim else sigma
        torch.testing.assert_close(P.eps(x, t), -sigma * grad, rtol=1e-9, atol=1e-11)


def test_exact_samplers_of_the_data():
    P = gaussian(4, seed=3)
    assert_moments(P.sample(20000, generator=gen(3)), P.mean, P.cov)
    M = gaussian_mixture(3, 3, seed=3)
    x = M.sample(20000, generator=gen(4))
    mean = (M.weights[:, None] * M.means).sum(0)
    second = (M.weights[:, None, None] * (M.covs + M.means[:, :, None] * M.means[:, None, :])).sum(0)
    assert_moments(x, mean, second - mean[:, None] * mean[None, :], bias=0.01)  # bias: a mixture is not Gaussian


def test_gaussian_ode_flow_is_exact():
    P = gaussian(3, seed=4)
    x = torch.randn(5, 3, generator=gen(5), dtype=F64)
    torch.testing.assert_close(P.ode_flow(P.ode_flow(x, 1.0, 0.4), 0.4, 0.0), P.ode_flow(x, 1.0, 0.0))
    # It carries the marginal at t = 1 to the marginal at t (a linear map A with A S_1 A^T = S_t).
    m1, S1 = P.marginal(1.0)
    A = P.ode_flow(torch.eye(3, dtype=F64) + m1, 1.0, 0.3) - P.ode_flow(m1[None], 1.0, 0.3)
    m3, S3 = P.marginal(0.3)
    torch.testing.assert_close(A.T @ S1 @ A, S3)
    torch.testing.assert_close(P.ode_flow(m1[None], 1.0, 0.3)[0], m3)


def test_perturbed_ladder_has_errors_two_to_the_minus_l():
    P = gaussian(8, seed=5)
    ladder = perturbed_ladder(P.eps, 8, levels=4, seed=5)
    assert isinstance(ladder, Ladder) and ladder.costs == (4.0, 16.0, 64.0, 256.0)
    assert perturbed_ladder(P.eps, 8, levels=2, costs=[1, 3]).costs == (1.0, 3.0)
    x = torch.randn(4000, 8, generator=gen(6), dtype=F64)
    for l, f in enumerate(ladder, start=1):
        err = float((f(x, 0.5) - P.eps(x, 0.5)).pow(2).mean().sqrt())
        assert abs(err / 2.0**-l - 1) < 0.15, (l, err)  # RMS 1 per coordinate up to the finite set of phases

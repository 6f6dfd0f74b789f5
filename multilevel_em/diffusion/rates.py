"""Rates that know where errors matter: measured propagation, sensitivity-weighted and learned rates.

ML-EM inside a sampler replaces the top model's eps at call n by the telescoping estimate

    eps^K + sum_l a_{n,l} (eps^l - eps^{l-1}),   a_{n,l} = B_{n,l} / p_{n,l} - 1,   B ~ Bernoulli(p),

so, to first order, the final sample moves by ``sum_{n,l} a_{n,l} J_{n,l}`` with J_{n,l} the
response of the sampler's output to a unit weight on correction l at call n.  The draws are
independent with mean-zero a, so the added mean squared error is

    V = sum_{n,l} v_{n,l} (1 / p_{n,l} - 1),   v_{n,l} = E |J_{n,l}|^2,

and, at a given expected cost sum_n sum_l C_l p_{n,l}, it is smallest for p_{n,l} proportional to
sqrt(v_{n,l} / C_l).  Write v_{n,l} = (h_n rho_l(t_n))^2 with h_n the call's span in t: rho_l is
the *propagated* drift difference, and rho_l = s_l(t) delta_l(t) splits it into the RMS drift
difference delta_l(t) = |(beta / sigma)(eps^l - eps^{l-1})| that the closed form uses
(lambda = mu delta / sqrt(C), docs/method.md, "Choosing the rates") and a sensitivity s_l(t): how much of a
perturbation made at time t survives to the end of *this* sampler (noise at high t fades in
the reverse SDE; an ODE sampler carries it).

* :func:`measure_profiles` measures delta on every call and s on blocks of calls by
  perturbing the weights (random signs per sample and call, so the blocks' cross terms cancel)
  and rerunning the sampler on the same noise.
* :meth:`Profiles.shape` gives the per-call :class:`~multilevel_em.calibration.rates.RateShape` of a rate
  rule chosen by name ("closed", "sensitivity"), which turns it into probabilities at a given expected cost;
  the rate math (expected cost, mu search, rate callables) lives in :mod:`multilevel_em.calibration.rates`.
* :func:`learn_probabilities` is the paper's learned time-dependent probabilities: projected
  stochastic gradient descent on the mean squared distance to the top model alone at a fixed
  expected cost, with the score-function gradient ``(B - p) / (p (1 - p))`` for the Bernoulli
  draws and a simultaneous-perturbation finite difference through the sampler for the weights
  1 / p.

Costs are per sample in top-level equivalents (the top model's evaluation = 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..calibration import rates as _home
from ..calibration.rates import added_variance, per_call_rates, rate_shape, search_threshold
from .samplers import sample
from .schedule import VPSchedule

__all__ = ["LadderResponse", "LearnedRates", "Profiles", "as_rates", "learn_probabilities", "measure_profiles"]

#: Names whose home is now :mod:`multilevel_em.calibration.rates`; importing them from here still works.
_MOVED = ("RateShape", "expected_cost")


def __getattr__(name: str):
    if name in _MOVED:
        import warnings

        warnings.warn(
            f"multilevel_em.diffusion.rates.{name} moved to multilevel_em.calibration.rates.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(_home, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class LadderResponse:
    """An eps model for measurements: ``eps^K + sum_l a[n, l] (eps^l - eps^{l-1})`` at call n.

    Every level runs on every call (this is a measuring tool, not a sampler: use
    :class:`MultilevelDenoiser` to sample).  ``weights`` is None (the top model alone) or a
    tensor (calls, K - 1, batch): per call, correction and sample.  After a run, ``times`` and
    ``spans`` hold each call's t and step span, and ``deltas`` (calls, K - 1) the RMS over the
    batch of the drift difference (beta / sigma)(eps^l - eps^{l-1}) at that call.  Calls on
    another number of rows than ``batch`` (the samplers' one-row shape check) return the top
    model's output and are not recorded.
    """

    def __init__(
        self, models: Sequence[Callable], schedule: VPSchedule, batch: int, weights: Optional[torch.Tensor] = None
    ):
        if len(models) < 2:
            raise ValueError(f"models: expected at least 2 levels, got {len(models)}")
        self.models, self.schedule, self.batch, self.weights = list(models), schedule, int(batch), weights
        self.times: List[float] = []
        self.spans: List[float] = []
        self.deltas: List[List[float]] = []
        self.state_rms: List[float] = []
        self._h = None

    def set_step(self, h, index=None, steps=None) -> None:
        self._h = float(h)

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        t = float(t)
        if x.shape[0] != self.batch:
            return self.models[-1](x, t)
        n = len(self.times)
        self.times.append(t)
        self.spans.append(self._h)
        self.state_rms.append(float(x.double().flatten(1).pow(2).sum(1).mean().sqrt()))
        outs = [m(x, t) for m in self.models]
        diffs = [outs[l] - outs[l - 1] for l in range(1, len(outs))]
        k = float(self.schedule.beta(t)) / float(self.schedule.sigma(t))
        self.deltas.append([k * float(d.double().flatten(1).pow(2).sum(1).mean().sqrt()) for d in diffs])
        eps = outs[-1]
        if self.weights is not None:
            if n >= self.weights.shape[0]:
                raise ValueError(f"weights: {self.weights.shape[0]} calls given, the sampler made more")
            shape = (x.shape[0],) + (1,) * (x.ndim - 1)
            for l, d in enumerate(diffs):
                a = self.weights[n, l]
                if bool((a != 0).any()):
                    eps = eps + a.to(d.dtype).reshape(shape) * d
        return eps


def _run(models, schedule, weights, x_T, sampler, steps, opts) -> tuple:
    fn = LadderResponse(models, schedule, x_T.shape[0], weights)
    x = sample(fn, x_T, schedule=schedule, steps=steps, sampler=sampler, **opts).x
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f"sampler {sampler!r}: the samples are NaN or Inf")
    return x, fn


@dataclass
class Profiles:
    """What :func:`measure_profiles` measured for one sampler and step count.

    Attributes:
        sampler, steps: the sampler and its number of calls N.
        times, spans: each call's t and its span h_n in t, shape (N,).
        deltas: RMS drift difference delta_l(t_n) per call and correction, (N, K - 1), state units
            per unit time.
        state_rms: RMS norm of the state entering each call, (N,), state units.
        block_calls: the calls of each block, ``blocks`` lists of indices.
        sensitivity: s_l per block and correction, (blocks, K - 1): RMS of the final displacement over
            the RMS of the local displacement h delta EM would make, for unit weights on the block.
        sensitivity_se: its standard error from the spread over samples (delta method), same shape.
        n: samples used.
    """

    sampler: str
    steps: int
    times: np.ndarray
    spans: np.ndarray
    deltas: np.ndarray
    state_rms: np.ndarray
    block_calls: List[List[int]]
    sensitivity: np.ndarray
    sensitivity_se: np.ndarray
    n: int

    def per_call_sensitivity(self) -> np.ndarray:
        """s_l at every call, (N, K - 1): the block's value, linearly interpolated in log t between block
        centres (constant beyond the first and last)."""
        logt = np.log(np.maximum(self.times, 1e-12))
        centres = np.array([logt[c].mean() for c in self.block_calls])  # geometric mean time of each block
        order = np.argsort(centres)
        return np.stack(
            [np.interp(logt, centres[order], self.sensitivity[order, l]) for l in range(self.sensitivity.shape[1])], 1
        )

    def shape(self, kind: str, max_kick: float = 1.0) -> "_home.RateShape":
        """The per-call rate shape of the rule ``kind`` (:func:`multilevel_em.calibration.rates.rate_shape`):
        "closed" (delta) or "sensitivity" (s delta, with p floored so that a fired correction's kick
        (1 / p) h delta stays below ``max_kick`` times the state's RMS norm)."""
        if kind not in ("closed", "sensitivity"):
            raise ValueError(f"kind: expected 'closed' or 'sensitivity', got {kind!r}")
        sens = self.per_call_sensitivity() if kind == "sensitivity" else None
        return rate_shape(
            kind, self.times, self.spans, self.deltas, sensitivity=sens, state_rms=self.state_rms, max_kick=max_kick
        )

    def predicted_mse(self, p: np.ndarray, propagate: bool = True) -> float:
        """The first-order added MSE sum_{n,l} h_n^2 (s delta)^2 (1 / p - 1) of probabilities p (N, K - 1);
        ``propagate=False`` drops s (the planner's model: errors neither fade nor grow)."""
        rho = self.deltas * (self.per_call_sensitivity() if propagate else 1.0)
        size = self.spans[:, None] * rho  # h_n rho: the correction's size over the call (state units)
        return float(added_variance(np.asarray(p, dtype=float)[None], size, 1.0, np.ones(len(self.spans)))[0])

    @classmethod
    def from_dict(cls, d: dict) -> "Profiles":
        return cls(
            sampler=d["sampler"],
            steps=int(d["steps"]),
            n=int(d["n"]),
            times=np.asarray(d["times"]),
            spans=np.asarray(d["spans"]),
            deltas=np.asarray(d["deltas"]),
            state_rms=np.asarray(d["state_rms"]),
            block_calls=[list(b) for b in d["block_calls"]],
            sensitivity=np.asarray(d["sensitivity"]),
            sensitivity_se=np.asarray(d["sensitivity_se"]),
        )

    def to_dict(self) -> dict:
        return {
            "sampler": self.sampler,
            "steps": self.steps,
            "n": self.n,
            "times": self.times.tolist(),
            "spans": self.spans.tolist(),
            "deltas": self.deltas.tolist(),
            "state_rms": self.state_rms.tolist(),
            "block_calls": self.block_calls,
            "sensitivity": self.sensitivity.tolist(),
            "sensitivity_se": self.sensitivity_se.tolist(),
        }


def measure_profiles(
    models: Sequence[Callable],
    schedule: VPSchedule,
    x_T: torch.Tensor,
    *,
    sampler: str,
    steps: int,
    blocks: int = 8,
    scale: float = 0.1,
    generator: Optional[torch.Generator] = None,
    **opts,
) -> Profiles:
    """Measure delta_l on every call and the sensitivity s_l on ``blocks`` blocks of calls.

    Runs the sampler once with the top model alone (also recording delta) and once per block and
    correction with weights ``scale * r`` on that block (r = +-1 per sample and call, drawn from
    ``generator``), all from ``x_T`` with the sampler options ``opts`` (pass ``noise=`` a shared
    BrownianPath for "em" so every run has the same Brownian motion).  ``scale`` keeps the
    perturbation in the linear regime.  Cost: ``1 + blocks (K - 1)`` runs evaluating every level.

    Args:
        models: eps models cheapest first, K >= 2.
        schedule: the VPSchedule they were trained with.
        x_T: initial noise (n, ...), n >= 2.
        sampler, steps: as for :func:`~multilevel_em.diffusion.sample`.
        blocks: number of contiguous blocks of calls, 1 <= blocks <= steps.
        scale: the perturbation weight, > 0.
    """
    if isinstance(blocks, bool) or not isinstance(blocks, int) or not 1 <= blocks <= steps:
        raise ValueError(f"blocks: expected an int in [1, steps = {steps}], got {blocks!r}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected a number > 0, got {scale!r}")
    n = x_T.shape[0]
    if n < 2:
        raise ValueError(f"x_T: expected at least 2 samples, got {n}")
    base, fn = _run(models, schedule, None, x_T, sampler, steps, opts)
    times, spans = np.asarray(fn.times), np.asarray(fn.spans)
    deltas, state_rms = np.asarray(fn.deltas), np.asarray(fn.state_rms)
    N, L1 = deltas.shape
    calls = [c.tolist() for c in np.array_split(np.arange(N), blocks)]
    g = generator or torch.Generator().manual_seed(0)
    sens = np.zeros((blocks, L1))
    sens_se = np.zeros((blocks, L1))
    for b, block in enumerate(calls):
        for l in range(L1):
            w = torch.zeros((N, L1, n), dtype=torch.float64)
            signs = torch.randint(0, 2, (len(block), n), generator=g).to(torch.float64) * 2 - 1
            w[block, l] = scale * signs
            x, _ = _run(models, schedule, w, x_T, sampler, steps, opts)
            sq = (x - base).double().flatten(1).pow(2).sum(1) / scale**2  # (n,): sum_{n in block} |J_{n,l}|^2
            local = float((spans[block] ** 2 * deltas[block, l] ** 2).sum())
            m, se = float(sq.mean()), float(sq.std()) / math.sqrt(n)
            if local > 0 and m > 0:
                sens[b, l] = math.sqrt(m / local)
                sens_se[b, l] = 0.5 * sens[b, l] * se / m
    return Profiles(
        sampler=sampler,
        steps=N,
        times=times,
        spans=spans,
        deltas=deltas,
        state_rms=state_rms,
        block_calls=calls,
        sensitivity=sens,
        sensitivity_se=sens_se,
        n=n,
    )


def as_rates(times: np.ndarray, spans: np.ndarray, p: np.ndarray) -> list:
    """Deprecated: :func:`multilevel_em.calibration.rates.per_call_rates` (the rate callables' one home), which
    this calls: lambda_l(t_n) = p_{n,l} / h_n for times (N,), spans (N,), p (N, K - 1)."""
    import warnings

    warnings.warn(
        "multilevel_em.diffusion.rates.as_rates is deprecated: use multilevel_em.calibration.rates.per_call_rates",
        DeprecationWarning,
        stacklevel=2,
    )
    return per_call_rates(times, spans, p)


@dataclass
class LearnedRates:
    """What :func:`learn_probabilities` found: ``p`` (N, K - 1), the loss per iteration (mean squared distance
    to the top model alone on that iteration's batch), and the settings."""

    p: np.ndarray
    losses: List[float] = field(default_factory=list)
    iterations: int = 0
    budget: float = 0.0
    settings: Dict = field(default_factory=dict)


def _project(theta: torch.Tensor, A: np.ndarray, c: np.ndarray, budget: float) -> torch.Tensor:
    """Shift the knots theta by one constant so that p = sigmoid(A theta) has expected cost ``budget``
    (the rows of A sum to 1, so the shift moves every call's logit by the same constant)."""
    t = A @ theta.detach().numpy()

    def within(v: np.ndarray) -> np.ndarray:
        return _home.expected_cost(1.0 / (1.0 + np.exp(-(t[None] + v[:, None, None]))), c) <= budget

    return theta + search_threshold(within, -40.0, 40.0, smallest=False, points=3, rounds=80)


def learn_probabilities(
    models: Sequence[Callable],
    costs: Sequence[float],
    schedule: VPSchedule,
    draw_noise: Callable[[int], tuple],
    *,
    sampler: str,
    steps: int,
    budget: float,
    init: np.ndarray,
    iterations: int = 100,
    batch: int = 256,
    knots: int = 8,
    lr: float = 0.05,
    fd_scale: float = 0.05,
    seed: int = 0,
    progress: Optional[Callable[[str], None]] = None,
) -> LearnedRates:
    """The paper's learned time-dependent probabilities at a fixed expected cost.

    Parameters: ``knots`` values of logit p per correction, linear in the call index between them.
    Each iteration draws a batch (``draw_noise(i) -> (x_T, opts)``: the initial noise and the sampler
    options, e.g. a fresh BrownianPath), the Bernoulli draws B ~ p, and runs the sampler with the top
    model alone, with the ML-EM weights a = B / p - 1, and with the fired weights 1 / p scaled by
    (1 +- fd_scale r) (r = +-1 per sample, call and correction).  With f_b the squared distance of sample
    b to the top model alone, the gradient of E f in p_{n,l} is estimated by

        mean_b (f_b - f_-b) (B - p) / (p (1 - p))                   (score function: the draws' law)
      - mean_b B r (f+_b - f-_b) / (2 fd_scale p)                   (finite difference: the weights 1 / p)

    (f_-b: the mean of the other samples' f, a baseline that keeps the estimate unbiased) and Adam steps on
    the knots; after each step all logits shift by one constant so the expected cost
    stays ``budget``.  ``init`` (N, K - 1): the starting probabilities (e.g. the closed form's at this
    budget).

    Raises FloatingPointError when the loss or the parameters become NaN/Inf, or the loss exceeds 100
    times its starting value over 5 consecutive iterations ("diverged": lower ``lr``).
    """
    for name, v, least in (("iterations", iterations, 1), ("batch", batch, 2), ("knots", knots, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise ValueError(f"{name}: expected an int >= {least}, got {v!r}")
    for name, v in (("lr", lr), ("fd_scale", fd_scale)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name}: expected a number > 0, got {v!r}")
    c = np.asarray(costs, dtype=float) / float(costs[-1])
    N, L1 = init.shape
    knots = min(knots, N)
    # Interpolation matrix from knots to calls, (N, knots).
    u = np.linspace(0, knots - 1, N)
    A = np.zeros((N, knots))
    lo_i = np.minimum(np.floor(u).astype(int), knots - 2) if knots > 1 else np.zeros(N, int)
    frac = u - lo_i
    A[np.arange(N), lo_i] = 1 - frac
    if knots > 1:
        A[np.arange(N), lo_i + 1] = frac
    A_t = torch.tensor(A)
    p0 = np.clip(init, 1e-4, 1 - 1e-4)
    logit0 = np.log(p0 / (1 - p0))
    theta = torch.tensor(np.linalg.lstsq(A, logit0, rcond=None)[0], dtype=torch.float64)  # (knots, L1)
    theta = _project(theta, A, c, budget).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses: List[float] = []
    say = progress or (lambda _: None)
    bad = 0
    for it in range(iterations):
        with torch.no_grad():
            p = torch.sigmoid(A_t @ theta).clamp(1e-6, 1 - 1e-6)  # (N, L1)
        x_T, opts = draw_noise(it)
        n = x_T.shape[0]
        if n != batch:
            raise ValueError(f"draw_noise: expected batches of {batch}, got {n}")
        B = (torch.rand((N, L1, n), generator=g, dtype=torch.float64) < p[..., None]).to(torch.float64)
        r = torch.randint(0, 2, (N, L1, n), generator=g).to(torch.float64) * 2 - 1
        w = B / p[..., None]
        top, _ = _run(models, schedule, None, x_T, sampler, steps, opts)
        runs = []
        for a in (w - 1, w * (1 + fd_scale * r) - 1, w * (1 - fd_scale * r) - 1):
            x, _ = _run(models, schedule, a, x_T, sampler, steps, opts)
            runs.append((x - top).double().flatten(1).pow(2).sum(1))  # (n,)
        f, f_plus, f_minus = runs
        loss = float(f.mean())
        losses.append(loss)
        if not math.isfinite(loss) or not bool(torch.isfinite(theta).all()):
            raise FloatingPointError(f"learned rates diverged at iteration {it}: loss {loss}; lower lr (now {lr})")
        bad = bad + 1 if loss > 100 * losses[0] else 0
        if bad >= 5:
            raise FloatingPointError(
                f"learned rates diverged at iteration {it}: loss {loss:.3g} is over 100 times "
                f"its start {losses[0]:.3g} for 5 iterations; lower lr (now {lr})"
            )
        baseline = (f.sum() - f) / (n - 1)  # leave-one-out mean: keeps the score-function term unbiased
        pe = p[..., None]
        score = ((f - baseline) * (B - pe) / (pe * (1 - pe))).mean(2)
        explicit = -(B * r * (f_plus - f_minus) / (2 * fd_scale * pe)).mean(2)
        grad_p = score + explicit  # (N, L1): d E f / d p
        opt.zero_grad()
        surrogate = (grad_p * torch.sigmoid(A_t @ theta)).sum()
        surrogate.backward()
        opt.step()
        with torch.no_grad():
            theta.copy_(_project(theta, A, c, budget))
        if it % 10 == 0 or it == iterations - 1:
            say(f"learned rates: iteration {it + 1}/{iterations}, loss {loss:.4g}")
    with torch.no_grad():
        p = torch.sigmoid(A_t @ theta).numpy()
    return LearnedRates(
        p=p,
        losses=losses,
        iterations=iterations,
        budget=float(budget),
        settings=dict(batch=batch, knots=knots, lr=lr, fd_scale=fd_scale, seed=seed),
    )

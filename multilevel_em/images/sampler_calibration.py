"""Measure how each sampler's error falls with its step count on a UNet ladder (:class:`SamplerFit`).

For a sampler S the top UNet alone is run with ``ref_steps`` steps (S's converged solution)
and with each of ``steps`` steps, all from the same ``n`` initial noises and, for the SDE
sampler "em", the same Brownian path (its virtual Brownian tree is consistent across step
counts). The RMS distance to the converged solution at each step count is S's step-error
curve. Then ML-EM inside S is run at a few (steps, rate scale) points and its squared RMS
distance to the top level alone with the same steps (same noise) is divided by the
calibration's predicted added variance: S's randomization gain. Both go into
``Calibration.samplers[S]``; ``Calibration.plan(..., sampler=S)`` uses them.

Samplers measured: "em" (reverse SDE, family "sde"), "ddim" (eta = 0), "euler_ode" and
"dpmpp_2m" (probability-flow ODE, family "ode"). "ddpm" is refused: its scheduler draws
fresh noise for every step count, so runs with different step counts share no noise and a
pathwise converged solution does not exist (use "em", which integrates the same SDE).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence

import torch

from ..calibration.samplers import SamplerFit, combine_gains
from ..diffusion.registry import measurable_samplers

__all__ = ["MEASURABLE", "DEFAULT_STEPS", "check_samplers", "fit_table", "measure_samplers", "rms_error",
           "squared_distances"]

#: Samplers whose step-error curve can be measured pathwise, and their families (from the registry).
MEASURABLE = measurable_samplers()
#: Step counts of the measured curve (the budgets users run: a few to a few hundred steps).
DEFAULT_STEPS = (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
#: Step counts at which ML-EM's randomization gain is measured, and the budget (a fraction of the
#: top level alone at those steps) whose planned rate scale is used there.
GAIN_STEPS = (8, 32, 128)
GAIN_BUDGET_FRACTION = 0.25


def squared_distances(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-sample squared Euclidean distance ``|x_b - ref_b|^2``, float64, shape (n,)."""
    return (x - ref).double().flatten(1).pow(2).sum(1)


def rms_error(sq: torch.Tensor) -> tuple:
    """From per-sample squared distances (n,): the RMS error, its delta-method se, the mean square and its se."""
    m = float(sq.mean())
    se_sq = float(sq.std()) / math.sqrt(sq.numel()) if sq.numel() > 1 else math.nan
    rms = math.sqrt(m)
    return rms, (se_sq / (2 * rms) if rms > 0 else math.nan), m, se_sq


def check_samplers(samplers: Sequence[str]) -> tuple:
    """The names, validated: each measurable (ValueError naming the bad one and why), no repeats."""
    out = []
    for s in samplers:
        if s == "ddpm":
            raise ValueError(
                "samplers: 'ddpm' cannot be measured pathwise: its scheduler draws fresh noise for every step "
                "count, so there is no converged solution to measure against; use 'em' (the same reverse SDE)"
            )
        if s not in MEASURABLE:
            raise ValueError(f"samplers: expected some of {', '.join(MEASURABLE)}, got {s!r}")
        if s not in out:
            out.append(s)
    if not out:
        raise ValueError("samplers: expected at least one sampler name")
    return tuple(out)


def measure_samplers(
    pipe,
    samplers: Sequence[str] = tuple(MEASURABLE),
    *,
    n: int = 16,
    steps: Sequence[int] = DEFAULT_STEPS,
    ref_steps: int = 500,
    gain_steps: Sequence[int] = GAIN_STEPS,
    seed: int = 0,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, SamplerFit]:
    """Measure each sampler's step-error curve and ML-EM's randomization gain inside it.

    Args:
        pipe: a :class:`~multilevel_em.images.MultilevelPipeline` with a calibration (for the gain).
        samplers: names from :data:`MEASURABLE`.
        n: noise images (the same for every run).
        steps: step counts of the curve, each < ``ref_steps``.
        ref_steps: the step count of each sampler's converged solution; with "ddim" it must divide the
            schedule's ``num_train_timesteps`` (diffusers' DDIMScheduler steps by ``T // N`` timesteps, so
            any other N leaves its steps short of the grid and it converges to something else).
        gain_steps: step counts where the gain is measured (each must be in ``steps``); at each the
            rate scale is the calibration's plan for a quarter of the top level's cost at those steps.
        seed: seeds the noise (and Brownian path) and the level draws.
        progress: called with a short description before each run.

    Returns:
        ``{sampler: SamplerFit}``. Cost: about ``ref_steps + sum(steps)`` top-level evaluations of
        ``n`` images per sampler, plus the ML-EM runs.
    """
    from .pipeline import ReverseTimeRate

    samplers = check_samplers(samplers)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n: expected an int >= 2 (errors are RMS over images), got {n!r}")
    steps = sorted({int(s) for s in steps})
    if len(steps) < 2 or steps[0] < 1 or steps[-1] >= ref_steps:
        raise ValueError(f"steps: expected 2 or more step counts in [1, ref_steps = {ref_steps}), got {steps}")
    missing = [g for g in gain_steps if g not in steps]
    if missing:
        raise ValueError(f"gain_steps: {missing} not among the measured steps {steps}")
    T = pipe.ladder.schedule.num_train_timesteps
    if "ddim" in samplers and T % ref_steps:
        raise ValueError(f"ref_steps: {ref_steps} does not divide num_train_timesteps = {T}; DDIM's scheduler steps by "
                         f"T // N timesteps, so its {ref_steps}-step run is not converged; use a divisor of {T}")
    cal = pipe.calibration
    if cal is None:
        raise ValueError("the pipeline has no calibration: run pipe.calibrate() first (the gain needs its rates)")
    L = pipe.ladder
    t_max = L.schedule.t_max
    say = progress or (lambda _: None)

    def run(method, k, **kw):
        return pipe(n, method=method, steps=k, generator=torch.Generator().manual_seed(seed), **kw).x

    fits = {}
    for s in samplers:
        say(f"{s}: {ref_steps} steps (reference)")
        ref = run(s, ref_steps)
        errors, ses, tops = [], [], {}
        for k in steps:
            say(f"{s}: {k} steps")
            x = run(s, k)
            if k in gain_steps:
                tops[k] = x
            e, se, _, _ = rms_error(squared_distances(x, ref))
            errors.append(e)
            ses.append(se)
        measured, predicted, points = [], [], []
        for k in gain_steps:
            cheapest = L.costs[0] / L.costs[-1]
            budget = k * max(GAIN_BUDGET_FRACTION, 2 * cheapest)
            if budget >= k:
                continue  # the base level alone is too dear for ML-EM to differ from the top level here
            plan = cal.plan(budget=budget, steps=k)
            say(f"{s}: ML-EM, {k} steps, mu={plan.mu:.3g}")
            rates = [ReverseTimeRate(r, t_max) for r in plan.rates]
            x = run("mlem", k, sampler=s, rates=rates, levels=list(plan.levels))
            _, _, var, var_se = rms_error(squared_distances(x, tops[k]))
            pred = plan.prediction.added_variance
            if var > 0 and pred > 0:
                measured.append(var)
                predicted.append(pred)
            points.append({"steps": k, "mu": plan.mu, "levels": [l + 1 for l in plan.levels],
                           "measured_variance": var, "measured_variance_se": var_se, "predicted_variance": pred})
        gain, gain_se = combine_gains(measured, predicted) if measured else (1.0, math.nan)
        fits[s] = SamplerFit(sampler=s, family=MEASURABLE[s], steps=tuple(steps), errors=tuple(errors),
                             errors_se=tuple(ses), ref_steps=int(ref_steps), n=n, gain=gain, gain_se=gain_se,
                             gain_points=points)
    return fits


def fit_table(fits: Dict[str, SamplerFit]) -> str:
    """A table for humans: per sampler its order, gain and errors at the measured steps."""
    lines = []
    for s, f in fits.items():
        se = "n/a" if math.isnan(f.order_se) else f"{f.order_se:.2g}"
        gse = "n/a" if math.isnan(f.gain_se) else f"x/ {math.exp(f.gain_se):.2g}"
        lines.append(f"{s:>10} ({f.family}): error ~ {f.constant:.3g} N^-{f.order:.3g} (+- {se}), "
                     f"ML-EM randomization gain {f.gain:.3g} ({gse}); errors vs {f.ref_steps} steps: "
                     + ", ".join(f"{k}: {e:.3g}" for k, e in zip(f.steps, f.errors)))
    return "\n".join(lines)

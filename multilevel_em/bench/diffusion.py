"""``mlem bench diffusion``: ML-EM against single-model samplers and T-Stitch on trained MLP ladders.

Two exact-score problems (:mod:`multilevel_em.problems.gaussian`), each with a ladder of
:class:`~multilevel_em.diffusion.mlp.EpsMLP` noise predictors (widths 32..256, trained here
or loaded from a folder), costs in FLOPs per sample counted from the layer shapes:

* ``gaussian``: N(m, S) with a full covariance.  Pathwise error: every run starts from the same
  x_T, and the stochastic samplers share one :class:`~multilevel_em.BrownianPath` with a
  fine-step reference run of the exact eps ("em", ``ref_steps`` steps, to t_min = 1e-4).
  "em" runs (EM, T-Stitch, ML-EM) are compared with that reference; DDPM runs (DDIM with
  eta = 1, which is DDPM's ancestral step, with its variance noise taken from the same path)
  too; the deterministic samplers (DDIM, DPM-Solver++ 2M, ML-EM and T-Stitch inside it) are
  compared with the exact probability-flow map of x_T (closed form).  Error = RMS over
  samples of |x - x_ref|.
* ``mixture``: a Gaussian mixture; error = sliced Wasserstein-2 to as many exact samples
  (fixed projections), with unbiased MMD^2 (fixed bandwidth) recorded as well.  Runs share
  x_T and the Brownian path too (common random numbers).  The statistical floor is the SW
  between two independent exact sets.

Methods and knobs: EM, DDPM (top model, 10..1000 steps), DDIM and DPM-Solver++ 2M (top model,
5..100 steps), T-Stitch (level 1 for a fraction of the steps, then the top, in "em" and in
"dpmpp_2m"), ML-EM (:class:`~multilevel_em.diffusion.MultilevelDenoiser`) inside "em" and
inside "dpmpp_2m", over steps and the rate scale.  ML-EM's rates are
lambda_l(t) = mu delta_l(t) / sqrt(C_l), C_l = c_l + c_{l-1} (top-level units), with
delta_l(t) the RMS of the level difference of the reverse-SDE drift, (beta/sigma)(eps^l - eps^{l-1}),
over x ~ p_t (the law of the states along exact reverse trajectories), measured on a grid
of t and interpolated; mu is swept through R = int lambda_K dt, the expected number of
top-level firings per sample.

Cost: top-level equivalents per sample (one top-model evaluation = 1), and wall-clock seconds
for the whole batch.

Seeds: the sweep is repeated for K run seeds (``--seeds``, default 5; 2 with ``--quick``; run seed i
is ``seed + 1000 i``).  A run seed redraws x_T, the Brownian path, the DDPM noise, the ML-EM level
draws, the samples delta_l(t) is measured on and (mixture) the exact reference set, the SW
projections and the floor's exact sets; the problems and the ladders are fixed (trained once with
``seed``; ``--retrain`` retrains them per run seed).  For each (method, knob setting) the JSON has
the mean over seeds of error, cost and seconds with the standard error and a 95% Student-t
interval (:data:`BAND`); each method's front is the Pareto front of the means, drawn with the
error's interval shaded.  The table gives, for stated errors (multiples of the best mean error of
EM with the top model; the mixture also at that plus one sd of the exact-vs-exact SW), each method's
cost to reach the error on every seed's own front (interpolated in log-log between measured runs),
then its mean and 95% t-interval over seeds, and ML-EM's speedups paired by seed (geometric mean and
t-interval of the log ratio), ``resolved`` when the two cost intervals do not overlap.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..engine import BrownianPath, Ladder
from .common import pareto_front, rms_error, single_thread, write_json

SETTINGS = {
    # The full grid is the single-seed grid of the first version trimmed to fit 5 seeds in about 30 minutes
    # on one thread: ML-EM (EM) without 2000 steps and without R = 0.25 / 256 (blow-ups / past saturation
    # on every problem), and a finer step grid for the cheap ODE samplers (fairer step-function costs).
    "full": dict(
        dim=8,
        n_gauss=512,
        n_mix=1000,
        train_steps=2000,
        ref_steps=8192,
        seeds=5,
        em_steps=(10, 20, 50, 100, 200, 500, 1000),
        ode_steps=(5, 8, 10, 15, 20, 30, 50, 100),
        mlem_steps=(100, 200, 500, 1000),
        mlem_ode_steps=(10, 15, 20, 30, 50, 100),
        top_fires=(0.5, 1, 2, 4, 8, 16, 32, 64, 128),
        stitch_fractions=(0.2, 0.4, 0.6),
        planned_budgets=(2, 3, 5, 8, 10, 15, 20, 30, 50),
        planned_steps=(2, 5, 10, 20, 40, 80),
        planned_reference_steps=160,
    ),
    "quick": dict(
        dim=8,
        n_gauss=128,
        n_mix=400,
        train_steps=300,
        ref_steps=2048,
        seeds=2,
        em_steps=(10, 30, 100, 300),
        ode_steps=(5, 10, 20),
        mlem_steps=(100, 300),
        mlem_ode_steps=(10, 20),
        top_fires=(1, 4, 16, 64),
        stitch_fractions=(0.4,),
        planned_budgets=(5, 10, 20),
        planned_steps=(5, 10, 20, 40),
        planned_reference_steps=80,
    ),
}
WIDTHS = (32, 64, 128, 256)
T_MIN = 1e-4  # where "em" stops (and the Brownian path starts)
TARGET_FACTORS = (1.0, 1.1, 1.5, 3.0)  # stated errors: multiples of EM-top's best error
SINGLE = ("em_top", "ddpm_top", "ddim_top", "dpmpp_top")
LABELS = {
    "em_top": "EM (top)",
    "ddpm_top": "DDPM (top)",
    "ddim_top": "DDIM (top)",
    "dpmpp_top": "DPM-Solver++ 2M (top)",
    "tstitch_em": "T-Stitch (EM)",
    "tstitch_dpmpp": "T-Stitch (DPM++)",
    "mlem_em": "ML-EM (EM)",
    "mlem_dpmpp": "ML-EM (DPM++)",
    "planned_dpmpp": "planned schedule (DPM++)",
}
#: The multilevel methods whose speedups the tables report: ML-EM with swept rates, and the schedule planner's
#: pick per budget (``MultilevelModel.calibrate(run) -> plan(budget)`` inside DPM-Solver++).
MULTILEVEL = ("mlem_em", "mlem_dpmpp", "planned_dpmpp")


class InterpolatedRate:
    """t -> scale * delta(t), delta interpolated linearly in log t between measured points."""

    def __init__(self, times: Sequence[float], values: Sequence[float], scale: float):
        self.logt = np.log(np.asarray(times, dtype=float))
        self.values = np.asarray(values, dtype=float)
        self.scale = float(scale)

    def __call__(self, t) -> float:
        return self.scale * float(np.interp(math.log(max(float(t), 1e-12)), self.logt, self.values))


def drift_deltas(
    models: Sequence, problem, *, n: int = 512, times: int = 48, t_min: float = T_MIN, seed: int = 0
) -> Dict:
    """delta_l(t) = RMS over x ~ p_t of |(beta/sigma)(eps^l - eps^{l-1})(x, t)|, l = 2..K, on a log grid of t."""
    g = torch.Generator().manual_seed(seed)
    x0 = problem.sample(n, generator=g)
    grid = np.geomspace(t_min, 1.0, times).tolist()
    sched = problem.schedule
    deltas = [[] for _ in models[1:]]
    with torch.no_grad():
        for t in grid:
            xt = sched.add_noise(x0, torch.randn(x0.shape, generator=g, dtype=x0.dtype), t)
            outs = [m(xt, t).to(torch.float64) for m in models]
            k = float(sched.beta(t)) / float(sched.sigma(t))
            for l in range(1, len(models)):
                deltas[l - 1].append(k * float((outs[l] - outs[l - 1]).pow(2).sum(1).mean().sqrt()))
    return {"times": grid, "deltas": deltas}


def mlem_rates(costs: Sequence[float], deltas: Dict, top_fires: float) -> List[InterpolatedRate]:
    """lambda_l(t) = mu delta_l(t) / sqrt(C_l), mu set so that int lambda_K dt = top_fires."""
    c = [x / costs[-1] for x in costs]
    C = [c[l] + c[l - 1] for l in range(1, len(c))]
    times = np.asarray(deltas["times"])
    top = np.asarray(deltas["deltas"][-1])
    integral = float(np.sum(0.5 * (top[1:] + top[:-1]) * np.diff(times))) / math.sqrt(C[-1])
    mu = top_fires / integral
    return [InterpolatedRate(times, d, mu / math.sqrt(Cl)) for d, Cl in zip(deltas["deltas"], C)]


def _saturated(rates, steps: int, times: Sequence[float], *, t_start: float = 1.0, t_end: float = T_MIN) -> bool:
    """Whether every rate fires with probability 1 (lambda(t) h >= 1) at every measured time t a step starts
    from, on ``steps`` steps of h = (t_start - t_end) / steps ("em": t_max down to T_MIN; the diffusers
    samplers: 1 down to 0)."""
    h = (t_start - t_end) / steps
    return all(r(t) * h >= 1 for r in rates for t in times if t >= t_end + h * (1 - 1e-9))


# ----------------------------------------------------------------------------- one problem


class _TimestepEps(torch.nn.Module):
    """An eps(x, t) model called as a diffusers model is: ``(x, k)`` with the integer timestep k, t = schedule.time(k)."""

    def __init__(self, model, schedule):
        super().__init__()
        self.model, self.schedule = model, schedule

    def forward(self, x, k):
        return self.model(x, float(self.schedule.time(float(k))))


def schedule_model(models, costs, schedule, *, seed: int):
    """The ladder as one :class:`~multilevel_em.diffusion.MultilevelModel` in DPM-Solver++ 2M's diffusers scheduler,
    and ``runner(x_T)``, which returns ``run(num_inference_steps)``: the package's scheduler loop from ``x_T`` (the same
    every run). Returns ``(model, runner)``."""
    from ..diffusion import MultilevelModel
    from ..diffusion.registry import sampler_spec
    from ..diffusion.samplers import make_scheduler, scheduler_loop

    scheduler = make_scheduler("dpmpp_2m", schedule)
    model = MultilevelModel(
        [_TimestepEps(m, schedule) for m in models],
        costs=list(costs),
        scheduler=scheduler,
        generator=torch.Generator().manual_seed(seed),
        pair_guidance=False,
    )

    spec = sampler_spec("dpmpp_2m")

    def runner(x_T: torch.Tensor):
        @torch.no_grad()
        def run(num_inference_steps: int) -> torch.Tensor:
            x, _ = scheduler_loop(
                model,
                x_T,
                schedule,
                int(num_inference_steps),
                spec=spec,
                generator=None,
                scheduler=scheduler,
                model_kwargs={},
            )
            return x

        return run

    return model, runner


def _planned_run(model, run, steps: int):
    """One run of the model's schedule, as :func:`~multilevel_em.diffusion.sample` reports one: ``.x``,
    ``.top_equivalents`` per sample and ``.evaluations`` (sample-evaluations of each level)."""
    from types import SimpleNamespace

    model.reset()
    x = run(steps)
    return SimpleNamespace(
        x=x,
        top_equivalents=model.report()["top_equivalents_per_image"],
        evaluations=[int(e) for e in model.evaluations],
    )


def run_problem(
    kind: str,
    mlp,
    *,
    settings: Dict,
    seed: int = 0,
    progress: Callable[[str], None] = print,
    gamma: Optional[Dict] = None,
    rates: Optional[Callable] = None,
) -> Dict:
    """Sweep every method on one problem with a trained :class:`~multilevel_em.diffusion.mlp.MLPLadder`.

    ``seed`` draws x_T (``n`` x ``dim``), the Brownian path, the DDPM noise, the ML-EM level draws, the
    samples delta_l(t) is measured on, and (mixture) the exact reference set, the SW projections and the
    floor's exact sets; the ladder and the problem are fixed by ``mlp``.  ``gamma``: the ladder's
    :func:`~multilevel_em.diffusion.mlp.measure_gamma` result, measured here when None (it does not depend
    on ``seed``).  ``rates``: ``rates(costs, deltas, top_fires) -> [lambda_2, ..., lambda_K]`` (callables of
    t), :func:`mlem_rates` when None.  Returns one dict: every run (``method``, knobs, ``cost`` in
    top-level equivalents per sample, ``seconds``, ``error``, mixture ``mmd2``), the per-method Pareto fronts
    and the cost-to-reach table of this seed alone."""
    from ..diffusion import MultilevelDenoiser, sample
    from ..diffusion.metrics import median_bandwidth, mmd2_unbiased, sliced_wasserstein
    from ..diffusion.mlp import measure_gamma
    from ..problems.gaussian import problem_from_spec

    problem = problem_from_spec(mlp.config["problem"], mlp.schedule)
    sched = problem.schedule
    models, costs = list(mlp.models), mlp.costs
    top = models[-1]
    ladder = mlp.ladder()
    n = settings["n_gauss"] if kind == "gaussian" else settings["n_mix"]
    dim = problem.dim
    t_start = time.perf_counter()
    gamma = measure_gamma(mlp, problem) if gamma is None else gamma
    rates_fn = mlem_rates if rates is None else rates
    g = torch.Generator().manual_seed(seed + 11)
    x_T = torch.randn((n, dim), generator=g, dtype=torch.float64)
    depth = max(settings["ref_steps"], 4096).bit_length() + 2
    W = BrownianPath(x_T.shape, T_MIN, 1.0, seed=seed + 12, dtype=x_T.dtype, depth=depth)

    if kind == "gaussian":
        ref_sde = sample(
            problem.eps, x_T, schedule=sched, steps=settings["ref_steps"], sampler="em", noise=W, t_min=T_MIN
        ).x
        ref_ode = problem.ode_flow(x_T, 1.0, 0.0)
        metric = "pathwise RMS error"

        def error(x, family):
            return rms_error(x, ref_ode if family == "ode" else ref_sde), {}

        floor = None
    else:
        exact = problem.sample(n, generator=torch.Generator().manual_seed(seed + 13))
        bw = median_bandwidth(exact, exact)
        metric = "sliced Wasserstein-2 to exact samples"

        def error(x, family):
            sw = sliced_wasserstein(x, exact, projections=256, generator=torch.Generator().manual_seed(seed + 14))
            return sw, {"mmd2": mmd2_unbiased(x, exact, bandwidth=bw)}

        others = [problem.sample(n, generator=torch.Generator().manual_seed(seed + 100 + j)) for j in range(5)]
        floor_errors = [error(o, None) for o in others]  # SW and MMD^2 of each, computed once
        sws = [sw for sw, _ in floor_errors]
        mmds = [extra["mmd2"] for _, extra in floor_errors]
        floor = {
            "sw_mean": float(np.mean(sws)),
            "sw_std": float(np.std(sws, ddof=1)),
            "mmd2_mean": float(np.mean(mmds)),
            "mmd2_std": float(np.std(mmds, ddof=1)),
            "what": "SW / MMD^2 between independent exact sample sets of the same size",
        }
    runs: List[Dict] = []

    def record(method, family, fn, **knobs):
        t0 = time.perf_counter()
        out = fn()
        secs = time.perf_counter() - t0
        err, extra = error(out.x, family)
        runs.append(
            dict(
                method=method,
                **knobs,
                cost=out.top_equivalents,
                seconds=secs,
                error=err,
                **extra,
                evaluations=list(out.evaluations),
            )
        )

    # Single-model samplers with the top model.
    for N in settings["em_steps"]:
        record(
            "em_top",
            "sde",
            lambda: sample(top, x_T, schedule=sched, steps=N, sampler="em", noise=W, t_min=T_MIN),
            steps=N,
        )
        if kind == "gaussian":  # DDPM = DDIM with eta = 1, its noise from the shared path
            record(
                "ddpm_top",
                "sde",
                lambda: sample(top, x_T, schedule=sched, steps=N, sampler="ddim", eta=1.0, noise=W),
                steps=N,
            )
        else:
            record(
                "ddpm_top",
                "sde",
                lambda: sample(
                    top,
                    x_T,
                    schedule=sched,
                    steps=N,
                    sampler="ddpm",
                    generator=torch.Generator().manual_seed(seed + 15),
                ),
                steps=N,
            )
    for N in settings["ode_steps"]:
        record("ddim_top", "ode", lambda: sample(top, x_T, schedule=sched, steps=N, sampler="ddim"), steps=N)
        record("dpmpp_top", "ode", lambda: sample(top, x_T, schedule=sched, steps=N, sampler="dpmpp_2m"), steps=N)
    progress(f"{kind}: single-model samplers done ({time.perf_counter() - t_start:.0f} s)")

    # T-Stitch: level 1 for the first fraction of the steps, the top model for the rest.
    stitch = Ladder([models[0], top], [costs[0], costs[-1]])
    for f in settings["stitch_fractions"]:
        for N in settings["em_steps"]:
            record(
                "tstitch_em",
                "sde",
                lambda: sample(
                    None, x_T, schedule=sched, steps=N, sampler="em", noise=W, t_min=T_MIN, stitch=(stitch, [f])
                ),
                steps=N,
                fraction=f,
            )
        for N in settings["ode_steps"]:
            record(
                "tstitch_dpmpp",
                "ode",
                lambda: sample(None, x_T, schedule=sched, steps=N, sampler="dpmpp_2m", stitch=(stitch, [f])),
                steps=N,
                fraction=f,
            )
    progress(f"{kind}: T-Stitch done ({time.perf_counter() - t_start:.0f} s)")

    # ML-EM with calibrated time-dependent rates.
    deltas = drift_deltas(models, problem, seed=seed + 16)
    gm = torch.Generator().manual_seed(seed + 17)
    for method, sampler, steps_list, span in (
        ("mlem_em", "em", settings["mlem_steps"], (sched.t_max, T_MIN)),
        ("mlem_dpmpp", "dpmpp_2m", settings["mlem_ode_steps"], (1.0, 0.0)),
    ):
        for N in steps_list:
            for R in settings["top_fires"]:
                lam = rates_fn(costs, deltas, R)
                den = MultilevelDenoiser(ladder, rates=lam, generator=gm, schedule=sched)
                opts = dict(noise=W, t_min=T_MIN) if sampler == "em" else {}
                record(
                    method,
                    "sde" if sampler == "em" else "ode",
                    lambda: sample(den, x_T, schedule=sched, steps=N, sampler=sampler, **opts),
                    steps=N,
                    top_fires=R,
                )
                if _saturated(lam, N, deltas["times"], t_start=span[0], t_end=span[1]):
                    break  # every correction fires at every step: larger R only repeats EM-top
    progress(f"{kind}: ML-EM done ({time.perf_counter() - t_start:.0f} s)")

    # The schedule planner inside DPM-Solver++: calibrate(run(N)) once on its own noise batch (independent of the
    # x_T the runs are scored on, so the pick is not fitted to them), then one pick per budget, run from x_T.
    if settings.get("planned_budgets"):
        model, runner = schedule_model(models, costs, sched, seed=seed + 18)
        x_cal = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(seed + 20), dtype=x_T.dtype)
        model.calibrate(
            runner(x_cal),
            steps=settings["planned_steps"],
            reference_steps=settings["planned_reference_steps"],
            seed=seed + 19,
        )
        run = runner(x_T)
        for budget in settings["planned_budgets"]:
            plan = model.plan(budget)
            record(
                "planned_dpmpp",
                "ode",
                lambda: _planned_run(model, run, plan.pipeline_kwargs["num_inference_steps"]),
                budget=budget,
                pick_steps=plan.choice.num_inference_steps,  # not a knob: the pick may differ between seeds
                pick=plan.choice.name,
                kind=plan.choice.kind,
                predicted_cost=plan.choice.predicted_cost,
            )
        progress(f"{kind}: planned schedules done ({time.perf_counter() - t_start:.0f} s)")

    methods = list(LABELS)
    fronts = {m: pareto_front((r["cost"], r["error"]) for r in runs if r["method"] == m) for m in methods}
    fronts_s = {m: pareto_front((r["seconds"], r["error"]) for r in runs if r["method"] == m) for m in methods}
    best_em = min(e for _, e in fronts["em_top"])
    targets = [(f"{f:g} x best EM-top", f * best_em) for f in TARGET_FACTORS]
    extra = {}
    if floor is not None:
        # Within statistical noise: best EM-top SW plus one standard deviation of exact-vs-exact SW.
        targets.insert(1, ("best EM-top + 1 sd", best_em + floor["sw_std"]))
        fronts_mmd = {m: pareto_front((r["cost"], r["mmd2"]) for r in runs if r["method"] == m) for m in methods}
        best_mmd = min(e for _, e in fronts_mmd["em_top"])
        extra = {
            "fronts_mmd2": {m: [list(p) for p in f] for m, f in fronts_mmd.items()},
            "best_em_top_mmd2": best_mmd,
            "table_mmd2": [
                {
                    "target": f"best EM-top + {k} sd",
                    "mmd2": best_mmd + k * floor["mmd2_std"],
                    "cost": {m: _cost_to_reach(fronts_mmd[m], best_mmd + k * floor["mmd2_std"]) for m in methods},
                }
                for k in (0, 1, 2)
            ],
        }
    table = []
    for name, target in targets:
        row = {
            "target": name,
            "error": target,
            "cost": {m: _cost_to_reach(fronts[m], target) for m in methods},
            "seconds": {m: _cost_to_reach(fronts_s[m], target) for m in methods},
        }
        reached = [m for m in SINGLE if row["cost"][m] is not None]
        best_single = min(row["cost"][m] for m in reached) if reached else None
        for ml in MULTILEVEL:
            c = row["cost"][ml]
            row[f"{ml}_speedup_vs_em_top"] = _ratio(row["cost"]["em_top"], c)
            row[f"{ml}_speedup_vs_best_single"] = _ratio(best_single, c)
        row["best_single"] = min(reached, key=lambda m: row["cost"][m]) if reached else None
        table.append(row)
    return {
        "problem": kind,
        "dim": dim,
        "samples": n,
        "metric": metric,
        "spec": mlp.config["problem"],
        "ladder": {
            "widths": mlp.widths,
            "costs_flops": costs,
            "depth": mlp.config["depth"],
            "training": mlp.config.get("training"),
        },
        "gamma": gamma,
        "deltas": deltas,
        "statistical_floor": floor,
        "t_min": T_MIN,
        "ref_steps": settings["ref_steps"] if kind == "gaussian" else None,
        "runs": runs,
        "fronts": {m: [list(p) for p in f] for m, f in fronts.items()},
        "fronts_seconds": {m: [list(p) for p in f] for m, f in fronts_s.items()},
        "best_em_top_error": best_em,
        "table": table,
        **extra,
        "seed": seed,
        "seconds": time.perf_counter() - t_start,
    }


def _cost_to_reach(front, error: float) -> Optional[float]:
    costs = [c for c, e in front if e <= error + 1e-12 * abs(error)]
    return min(costs) if costs else None


def cost_to_reach(front, error: float) -> Optional[float]:
    """Cost at which a Pareto front (``[(cost, error)]`` by cost, errors falling) reaches ``error``:
    interpolated linearly in (log cost, log error) between the last point above ``error`` and the first
    at or below it (the cost a step count between two measured ones would need); the cheapest point's cost
    when it already reaches ``error``; None when no point does."""
    for j, (c, e) in enumerate(front):
        if e <= error + 1e-12 * abs(error):
            if j == 0 or error <= 0 or e <= 0:
                return c
            c0, e0 = front[j - 1]
            w = (math.log(e0) - math.log(error)) / (math.log(e0) - math.log(e)) if e0 > e else 1.0
            return math.exp(math.log(c0) + min(max(w, 0.0), 1.0) * (math.log(c) - math.log(c0)))
    return None


def _ratio(a, b) -> Optional[float]:
    return a / b if a is not None and b is not None else None


# ----------------------------------------------------------------------------- over seeds

# Two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30 (beyond: a Cornish-Fisher expansion).
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)
BAND = (
    "95% Student-t interval over seeds: mean ± t_{0.975, K-1} se, se = sd / sqrt(K) (sd with ddof = 1, "
    "K = the number of seeds); none for K = 1"
)
KNOBS = ("steps", "fraction", "top_fires", "budget")


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}, the two-sided 95% quantile of Student's t with ``df >= 1`` degrees of freedom (3 decimals)."""
    if df < 1:
        raise ValueError(f"df: expected >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_band(values: Sequence[float]) -> Dict:
    """Mean of K values with its standard error and 95% t-interval ``[lo, hi]`` (see :data:`BAND`).

    Returns ``{"n", "mean", "sd", "se", "lo", "hi"}``; ``sd``, ``se``, ``lo``, ``hi`` are None for K = 1."""
    v = np.asarray([float(x) for x in values], dtype=float)
    if v.size == 0:
        raise ValueError("values: expected at least one value")
    mean = float(v.mean())
    if v.size == 1:
        return {"n": 1, "mean": mean, "sd": None, "se": None, "lo": None, "hi": None}
    sd = float(v.std(ddof=1))
    se = sd / math.sqrt(v.size)
    half = t_quantile_975(v.size - 1) * se
    return {"n": int(v.size), "mean": mean, "sd": sd, "se": se, "lo": mean - half, "hi": mean + half}


def _knobs(run: Dict) -> tuple:
    return (run["method"],) + tuple((k, run[k]) for k in KNOBS if k in run)


def aggregate_settings(
    per_seed_runs: Sequence[Sequence[Dict]], fields: Sequence[str] = ("error", "mmd2", "cost", "seconds")
) -> List[Dict]:
    """One entry per (method, knob setting) present in every seed's runs: ``method``, the knobs, ``seeds``
    (K) and a :func:`mean_band` of each of ``fields`` that every run has.  Settings missing from some seed
    (ML-EM stops raising R once its rates saturate, which can happen one R earlier on one seed) are left out."""
    if not per_seed_runs:
        raise ValueError("per_seed_runs: expected the runs of at least one seed")
    by_seed = [{_knobs(r): r for r in runs} for runs in per_seed_runs]
    out = []
    for key in by_seed[0]:  # in the first seed's order
        if not all(key in b for b in by_seed):
            continue
        rs = [b[key] for b in by_seed]
        entry = {"method": key[0], **dict(key[1:]), "seeds": len(rs)}
        for f in fields:
            if all(f in r and r[f] is not None for r in rs):
                entry[f] = mean_band([r[f] for r in rs])
        out.append(entry)
    return out


def mean_fronts(settings: Sequence[Dict], field: str = "error", cost: str = "cost") -> Dict[str, List[Dict]]:
    """Per method, the Pareto front of the settings' mean (cost, field): a list, by cost, of the settings on it."""
    fronts: Dict[str, List[Dict]] = {}
    for m in LABELS:
        pts = [
            (e[cost]["mean"], e[field]["mean"], j) for j, e in enumerate(settings) if e["method"] == m and field in e
        ]
        front, best = [], math.inf
        for _c, err, j in sorted(pts):
            if err < best:
                front.append(settings[j])
                best = err
        fronts[m] = front
    return fronts


def reach_summary(costs: Sequence[Optional[float]]) -> Dict:
    """Per-seed costs to reach an error (None: not reached on that seed) -> ``per_seed``, ``reached`` (count),
    ``n``, and the :func:`mean_band` fields (``mean``, ``se``, ``lo``, ``hi``) when every seed reached it
    (else those are None: an unreached seed has no cost to average)."""
    got = [c for c in costs if c is not None]
    out = {"per_seed": list(costs), "reached": len(got), "n": len(costs)}
    band = (
        mean_band(got)
        if got and len(got) == len(costs)
        else {"mean": None, "sd": None, "se": None, "lo": None, "hi": None}
    )
    out.update({k: band[k] for k in ("mean", "sd", "se", "lo", "hi")})
    return out


def speedup_summary(reference: Dict, method: Dict) -> Dict:
    """Speedup of ``method`` over ``reference`` (two :func:`reach_summary`), paired by seed: the ratio
    reference cost / method cost per seed; ``mean``: geometric mean; ``lo``, ``hi``: the 95% t-interval of
    the mean log ratio, exponentiated (None unless both reached the error on every seed, K >= 2).
    ``resolved``: the two cost intervals do not overlap (``method`` hi < ``reference`` lo, or the reverse)."""
    pairs = [(a, b) for a, b in zip(reference["per_seed"], method["per_seed"]) if a is not None and b is not None]
    out = {
        "per_seed": [
            a / b if a is not None and b is not None else None
            for a, b in zip(reference["per_seed"], method["per_seed"])
        ],
        "pairs": len(pairs),
        "mean": None,
        "lo": None,
        "hi": None,
        "resolved": False,
    }
    if pairs:
        logs = [math.log(a / b) for a, b in pairs]
        band = mean_band(logs)
        out["mean"] = math.exp(band["mean"])
        if len(pairs) == reference["n"] and band["lo"] is not None:
            out["lo"], out["hi"] = math.exp(band["lo"]), math.exp(band["hi"])
    if None not in (reference["lo"], method["lo"]):
        out["resolved"] = bool(method["hi"] < reference["lo"] or reference["hi"] < method["lo"])
    return out


def _seed_fronts(runs: Sequence[Dict], field: str, cost: str = "cost") -> Dict[str, list]:
    return {m: pareto_front((r[cost], r[field]) for r in runs if r["method"] == m) for m in LABELS}


def reach_table(per_seed_runs: Sequence[Sequence[Dict]], targets: Sequence, field: str = "error") -> List[Dict]:
    """Rows ``{"target", field, "cost", "seconds", speedups}`` for stated errors ``targets`` ((name, value)):
    each method's cost to reach the error on each seed's own front (:func:`cost_to_reach`, interpolated
    between measured runs; ``cost_grid``: the cheapest measured run with ``field <= value``), summarised by
    :func:`reach_summary`; ML-EM's speedups over EM-top, DPM-Solver++
    and the best single-model sampler (the cheapest of :data:`SINGLE` on each seed) by :func:`speedup_summary`."""
    fronts = [_seed_fronts(runs, field) for runs in per_seed_runs]
    fronts_s = [_seed_fronts(runs, field, "seconds") for runs in per_seed_runs] if field == "error" else None
    rows = []
    for name, value in targets:
        cost = {m: reach_summary([cost_to_reach(f[m], value) for f in fronts]) for m in LABELS}
        row = {
            "target": name,
            field: value,
            "cost": cost,
            "cost_grid": {m: reach_summary([_cost_to_reach(f[m], value) for f in fronts]) for m in LABELS},
        }
        if fronts_s is not None:
            row["seconds"] = {m: reach_summary([cost_to_reach(f[m], value) for f in fronts_s]) for m in LABELS}
        best = []
        for f in fronts:
            reached = [c for c in (cost_to_reach(f[m], value) for m in SINGLE) if c is not None]
            best.append(min(reached) if reached else None)
        row["best_single_cost"] = reach_summary(best)
        for ml in MULTILEVEL:
            for ref in ("em_top", "dpmpp_top", "best_single"):
                row[f"{ml}_speedup_vs_{ref}"] = speedup_summary(cost.get(ref, row["best_single_cost"]), cost[ml])
        rows.append(row)
    return rows


def front_reach(settings: Sequence[Dict], method: str, error: float, field: str = "error") -> Dict:
    """Cost at which ``method``'s front of the means over seeds reaches ``error``, with a band from its
    confidence band: ``mean`` from the Pareto front of (mean cost, mean error) over the settings, ``lo``
    from that of (mean cost, interval low end), ``hi`` from (mean cost, interval high end), each by
    :func:`cost_to_reach` (None where a curve never reaches ``error``; ``lo`` <= ``mean`` <= ``hi`` enforced,
    as each end comes from its own front).  An interval low end <= 0 (a setting with a heavy-tailed error,
    such as ML-EM's rare blow-ups at small rates) reaches any error: ``lo`` is then that setting's cost.  Unlike the per-seed costs of
    :func:`reach_summary`, a setting is chosen on its mean over seeds, not on one seed's lucky draw."""
    es = [e for e in settings if e["method"] == method and field in e]
    out = {}
    for part in ("mean", "lo", "hi"):  # the error's low end reaches ``error`` first: the cost band's low end
        pts = [(e["cost"]["mean"], e[field][part]) for e in es if e[field][part] is not None]
        out[part] = cost_to_reach(pareto_front(pts), error)
    # Each end is read on its own Pareto front, so the interpolation can put it a little past the mean: clamp.
    if out["mean"] is not None:
        if out["lo"] is not None:
            out["lo"] = min(out["lo"], out["mean"])
        if out["hi"] is not None:
            out["hi"] = max(out["hi"], out["mean"])
    return out


def front_speedup(reference: Dict, method: Dict) -> Dict:
    """``reference`` mean cost / ``method`` mean cost (two :func:`front_reach`), with the interval
    [reference lo / method hi, reference hi / method lo]; ``resolved``: method hi < reference lo or the reverse."""

    def ratio(a, b):
        return a / b if a is not None and b is not None else None

    out = {
        "mean": ratio(reference["mean"], method["mean"]),
        "lo": ratio(reference["lo"], method["hi"]),
        "hi": ratio(reference["hi"], method["lo"]),
        "resolved": False,
    }
    if None not in (reference["lo"], reference["hi"], method["lo"], method["hi"]):
        out["resolved"] = bool(method["hi"] < reference["lo"] or reference["hi"] < method["lo"])
    return out


def _add_front_reach(rows: List[Dict], settings: Sequence[Dict], field: str) -> None:
    """Add ``front_cost`` (:func:`front_reach` per method) and ML-EM's ``*_front_speedup_vs_*`` to the rows."""
    for row in rows:
        row["front_cost"] = {m: front_reach(settings, m, row[field], field) for m in LABELS}
        for ml in MULTILEVEL:
            for ref in ("em_top", "dpmpp_top"):
                row[f"{ml}_front_speedup_vs_{ref}"] = front_speedup(row["front_cost"][ref], row["front_cost"][ml])


def aggregate_problem(per_seed: Sequence[Dict]) -> Dict:
    """Combine :func:`run_problem` results of one problem over K seeds (same ladder, different seeds).

    Returns the problem's fixed facts (ladder, gamma, metric), ``seeds``, ``band`` (:data:`BAND`),
    ``settings`` (:func:`aggregate_settings`), ``fronts`` ([mean cost, mean error] per front point, from
    the means), ``front_bands`` (those settings with their bands), ``fronts_seconds``, the target errors
    and ``table`` (:func:`reach_table`), the mixture's MMD^2 table and statistical floor over seeds,
    ``target_check`` (ML-EM vs DPM-Solver++ at >= 2x), every run with its ``seed`` (``runs``) and each
    seed's own result without its runs (``per_seed``)."""
    first = per_seed[0]
    runs_by_seed = [p["runs"] for p in per_seed]
    settings = aggregate_settings(runs_by_seed)
    fronts = mean_fronts(settings)
    fronts_s = mean_fronts(settings, cost="seconds")
    em = [e["error"]["mean"] for e in settings if e["method"] == "em_top"]
    best_em = min(em)
    targets = [(f"{f:g} x best mean EM-top", f * best_em) for f in TARGET_FACTORS]
    floor, extra = None, {}
    if first["statistical_floor"] is not None:
        fl = [p["statistical_floor"] for p in per_seed]
        # Pooled sd of exact-vs-exact SW over the seeds' floor sets (5 sets per seed).
        sw_sd = math.sqrt(float(np.mean([f["sw_std"] ** 2 for f in fl])))
        mmd_sd = math.sqrt(float(np.mean([f["mmd2_std"] ** 2 for f in fl])))
        floor = {
            "per_seed": fl,
            "sw_mean": float(np.mean([f["sw_mean"] for f in fl])),
            "sw_std": sw_sd,
            "mmd2_mean": float(np.mean([f["mmd2_mean"] for f in fl])),
            "mmd2_std": mmd_sd,
            "what": first["statistical_floor"]["what"] + "; mean over seeds, sd pooled over seeds",
        }
        targets.insert(1, ("best mean EM-top + 1 sd of the floor", best_em + sw_sd))
        fronts_mmd = mean_fronts(settings, field="mmd2")
        best_mmd = min(e["mmd2"]["mean"] for e in settings if e["method"] == "em_top")
        extra = {
            "fronts_mmd2": {m: [[e["cost"]["mean"], e["mmd2"]["mean"]] for e in f] for m, f in fronts_mmd.items()},
            "best_em_top_mmd2": best_mmd,
            "table_mmd2": reach_table(
                runs_by_seed, [(f"best mean EM-top + {k} sd", best_mmd + k * mmd_sd) for k in (0, 1, 2)], field="mmd2"
            ),
        }
    table = reach_table(runs_by_seed, targets)
    _add_front_reach(table, settings, "error")
    if "table_mmd2" in extra:
        _add_front_reach(extra["table_mmd2"], settings, "mmd2")
    runs = [dict(r, seed=p["seed"]) for p in per_seed for r in p["runs"]]
    keep = {
        k: v
        for k, v in first.items()
        if k in ("problem", "dim", "samples", "metric", "spec", "ladder", "gamma", "t_min", "ref_steps")
    }
    return {
        **keep,
        "seeds": [p["seed"] for p in per_seed],
        "band": BAND,
        "settings": settings,
        "fronts": {m: [[e["cost"]["mean"], e["error"]["mean"]] for e in f] for m, f in fronts.items()},
        "front_bands": fronts,
        "fronts_seconds": {m: [[e["seconds"]["mean"], e["error"]["mean"]] for e in f] for m, f in fronts_s.items()},
        "best_em_top_error": best_em,
        "statistical_floor": floor,
        "table": table,
        **extra,
        "target_check": target_check(table),
        "deltas": first["deltas"],
        "runs": runs,
        "per_seed": [{k: v for k, v in p.items() if k != "runs"} for p in per_seed],
        "gamma_per_seed": [p["gamma"].get("gamma") for p in per_seed],
        "seconds": float(sum(p["seconds"] for p in per_seed)),
    }


def target_check(table: Sequence[Dict], factor: float = 2.0) -> List[Dict]:
    """Per target error and ML-EM variant: is ML-EM at least ``factor`` x cheaper than DPM-Solver++ 2M
    (geometric-mean speedup over seeds) with non-overlapping cost intervals (``met``); ``met_strict`` also
    asks the speedup interval's lower end to be >= ``factor``; ``front`` (when the rows have it): the same
    on the fronts of the means, the costs where their bands reach the error (:func:`front_speedup`)."""
    out = []
    for row in table:
        for ml in (m for m in MULTILEVEL if f"{m}_speedup_vs_dpmpp_top" in row):  # the methods this table has
            sp = row[f"{ml}_speedup_vs_dpmpp_top"]
            met = bool(
                sp["resolved"]
                and sp["mean"] is not None
                and sp["mean"] >= factor
                and row["cost"][ml]["hi"] < row["cost"]["dpmpp_top"]["lo"]
            )
            entry = {
                "target": row["target"],
                "error": row["error"],
                "method": ml,
                "speedup": sp["mean"],
                "lo": sp["lo"],
                "hi": sp["hi"],
                "resolved": sp["resolved"],
                "met": met,
                "met_strict": bool(met and sp["lo"] is not None and sp["lo"] >= factor),
            }
            fs = row.get(f"{ml}_front_speedup_vs_dpmpp_top")
            if fs is not None:  # the same question on the fronts of the means and their bands
                entry["front"] = {
                    **fs,
                    "met": bool(
                        fs["resolved"]
                        and fs["mean"] is not None
                        and fs["mean"] >= factor
                        and row["front_cost"][ml]["hi"] < row["front_cost"]["dpmpp_top"]["lo"]
                    ),
                }
            out.append(entry)
    return out


# ----------------------------------------------------------------------------- output

STYLES = {
    "em_top": ("tab:blue", "o-"),
    "ddpm_top": ("tab:cyan", "v-"),
    "ddim_top": ("tab:olive", "s-"),
    "dpmpp_top": ("tab:green", "D-"),
    "tstitch_em": ("tab:purple", "x--"),
    "tstitch_dpmpp": ("tab:pink", "+--"),
    "mlem_em": ("tab:red", "o-"),
    "mlem_dpmpp": ("tab:orange", "^-"),
    "planned_dpmpp": ("tab:brown", "P-"),
}


def plot(results: Dict, path: str) -> None:
    """Log-log cost vs error, one panel per problem: each method's Pareto front of the mean (cost, error)
    over seeds, shaded over the error's 95% t-interval at each front point (the band's lower end is drawn
    at no less than 1/4 of the mean, for the log axis; the JSON has the unclipped intervals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    per = results["problems"]
    fig, axes = plt.subplots(1, len(per), figsize=(6.4 * len(per), 5), squeeze=False)
    for ax, r in zip(axes[0], per):
        for m, front in r["front_bands"].items():
            if not front:
                continue
            color, style = STYLES[m]
            cost = np.array([e["cost"]["mean"] for e in front])
            err = np.array([e["error"]["mean"] for e in front])
            ax.loglog(err, cost, style, color=color, ms=3, label=LABELS[m])
            if front[0]["error"]["lo"] is not None:
                lo = np.array([max(e["error"]["lo"], e["error"]["mean"] / 4) for e in front])
                hi = np.array([e["error"]["hi"] for e in front])
                ax.fill_betweenx(cost, lo, hi, color=color, alpha=0.12, lw=0)
        ax.axvline(r["best_em_top_error"], color="0.6", ls=":", lw=1, label="best mean EM-top error")
        if r["statistical_floor"]:
            ax.axvline(r["statistical_floor"]["sw_mean"], color="0.3", ls="--", lw=1, label="exact-vs-exact SW")
        k = len(r["seeds"])
        ax.set_title(
            f"{r['problem']} (d={r['dim']}), ladder {_gamma_text(r['gamma'])}, {k} seed{'s' * (k > 1)}", fontsize=10
        )
        worst = max(e for _, e in r["fronts"]["em_top"])
        ax.set_xlim(
            left=0.5 * min(e for f in r["fronts"].values() for _, e in f) if r["fronts"] else None, right=3 * worst
        )  # rare ML-EM blow-ups at the smallest rates would squash the plot
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(
            r["metric"]
            + (" (SDE samplers vs exact-eps SDE, ODE samplers vs exact flow)" if r["problem"] == "gaussian" else "")
            + ("\nmean over seeds; shaded: 95% t-interval of the error" if k > 1 else ""),
            fontsize=8,
        )
        ax.set_ylabel("mean cost per sample (top-level equivalents)")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("Diffusion sampling with trained MLP ladders: Pareto fronts over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _gamma_text(g: Dict, sep: str = " = ") -> str:
    """ "gamma = 1.23 ± 0.04"; "gamma n/a" when it was not fitted (a ladder of fewer than 3 levels)."""
    if g.get("gamma") is None:
        return "gamma n/a"
    text = f"gamma{sep}{g['gamma']:.2f}"
    return text + (f" ± {g['gamma_stderr']:.2f}" if g.get("gamma_stderr") is not None else "")


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.3g}" if v < 100 else f"{v:.0f}")


def _fmt_reach(s: Dict) -> str:
    """ "20 [18, 22]" (mean and 95% interval), "20" (one seed), "3/5" (reached on 3 of 5 seeds), "-" (never)."""
    if s["mean"] is None:
        return f"{s['reached']}/{s['n']}" if s["reached"] else "-"
    return _fmt(s["mean"]) + (f" [{_fmt(max(s['lo'], 0.0))}, {_fmt(s['hi'])}]" if s["lo"] is not None else "")


def _fmt_front(s: Dict) -> str:
    """Front cost "mean [lo, hi]"; "?" for a band end that never reaches the error on the measured grid."""

    def b(v):
        return "?" if v is None else _fmt(v)

    return "-" if s["mean"] is None else f"{_fmt(s['mean'])} [{b(s['lo'])}, {b(s['hi'])}]"


def _fmt_speedup(s: Dict) -> str:
    if s["mean"] is None:
        return "-"

    def b(v):  # "?": that end of the band never reaches the error on the measured grid
        return "?" if v is None else f"{v:.2f}"

    band = f" [{b(s['lo'])}, {b(s['hi'])}]" if s["lo"] is not None or s["hi"] is not None else ""
    return f"{s['mean']:.2f}x" + band + (" resolved" if s["resolved"] else "")


def table_lines(results: Dict) -> List[str]:
    """The printed summary: per problem and target error, each method's cost to reach it (mean [95% t-interval]
    over seeds, or reached/seeds) and ML-EM's speedups over DPM-Solver++ and the best single-model sampler."""
    lines = []
    for r in results["problems"]:
        k = len(r["seeds"])
        lines.append(
            f"{r['problem']}: {r['metric']}; ladder widths {r['ladder']['widths']}, "
            f"{_gamma_text(r['gamma'], sep=' ')}; {k} seed{'s' * (k > 1)}"
            + (
                f"; exact-vs-exact SW {r['statistical_floor']['sw_mean']:.3g} ± {r['statistical_floor']['sw_std']:.2g}"
                if r["statistical_floor"]
                else ""
            )
        )
        lines.append(
            "  cost (top-level equivalents) to reach the error, interpolated in log-log between measured runs "
            "on each seed's front: mean [95% t-interval] over seeds; k/K = reached on k of K seeds only; "
            "- = never"
        )
        for rows, field in ((r["table"], "error"), (r.get("table_mmd2", []), "mmd2")):
            if field == "mmd2" and rows:
                lines.append(
                    "  MMD^2 (Gaussian kernel, fixed bandwidth) barely sees rare far outliers, such as "
                    "ML-EM's blow-ups at small rates: read these rows with the SW rows above"
                )
            for row in rows:
                lines.append(f"  {'MMD^2 ' if field == 'mmd2' else ''}{row[field]:.3g} ({row['target']}):")
                lines.append("    " + "; ".join(f"{LABELS[m]} {_fmt_reach(row['cost'][m])}" for m in LABELS))
                lines.append(
                    "    fronts of the means, cost [band]: "
                    + "; ".join(f"{LABELS[m]} {_fmt_front(row['front_cost'][m])}" for m in ("dpmpp_top", *MULTILEVEL))
                    + "; speedup vs DPM++: "
                    + "; ".join(
                        f"{LABELS[ml]} {_fmt_speedup(row[f'{ml}_front_speedup_vs_dpmpp_top'])}" for ml in MULTILEVEL
                    )
                ) if "front_cost" in row else None
                lines.append(
                    "    speedup: "
                    + "; ".join(
                        f"{LABELS[ml]} vs {name} {_fmt_speedup(row[f'{ml}_speedup_vs_{ref}'])}"
                        for ml in MULTILEVEL
                        for ref, name in (("dpmpp_top", "DPM++"), ("best_single", "best single"))
                    )
                )
    return [line for line in lines if line is not None]


def reaggregate(results: Dict) -> Dict:
    """Recompute every problem's aggregate (:func:`aggregate_problem`) from the per-seed runs stored in a
    results dict of :func:`run_bench` (the aggregation is a pure function of the runs), e.g. after the
    aggregation changed; the sweep itself is not rerun.  Returns a new results dict."""
    per = []
    for p in results["problems"]:
        seeds = []
        for q in p["per_seed"]:
            runs = [{k: v for k, v in r.items() if k != "seed"} for r in p["runs"] if r["seed"] == q["seed"]]
            seeds.append({**q, "runs": runs})
        per.append(aggregate_problem(seeds))
    return {**results, "problems": per}


def seed_list(seed: int, seeds: int) -> List[int]:
    """The K run seeds derived from the base ``seed``: seed, seed + 1000, ..., seed + 1000 (K - 1) (run_problem
    uses offsets up to seed + 104 of each)."""
    if isinstance(seeds, bool) or not isinstance(seeds, (int, np.integer)) or seeds < 1:
        raise ValueError(f"seeds: expected a whole number >= 1, got {seeds!r}")
    return [int(seed) + 1000 * i for i in range(int(seeds))]


def run_bench(
    *,
    quick: bool = False,
    out: str = "results/diffusion.json",
    plot_path: Optional[str] = "results/diffusion.png",
    ladders: Optional[str] = None,
    save_ladders: Optional[str] = None,
    seed: int = 0,
    seeds: Optional[int] = None,
    retrain: bool = False,
    overrides: Optional[Dict] = None,
    command: Optional[str] = None,
    echo: Callable[[str], None] = print,
) -> Dict:
    """Train (or load) the two ladders once (seed ``seed``), sweep every method on both problems for each of
    ``seeds`` run seeds (:func:`seed_list`; default 5, 2 with ``quick``), aggregate over seeds
    (:func:`aggregate_problem`), write JSON and the plot, print the table.  ``retrain``: run seed i > 0
    also retrains the ladders with training seed = that run seed (the problems stay those of ``seed``)."""
    if retrain and ladders:
        raise ValueError("retrain: the ladders are loaded from --ladders; retraining per seed needs them trained here")
    from ..diffusion.mlp import load_mlp_ladder, measure_gamma, train_mlp_ladder
    from ..problems.gaussian import gaussian, gaussian_mixture, problem_from_spec

    settings = dict(SETTINGS["quick" if quick else "full"])
    settings.update(overrides or {})
    if seeds is not None:
        settings["seeds"] = seeds
    run_seeds = seed_list(seed, settings["seeds"])
    t0 = time.perf_counter()
    per = []
    with single_thread():
        for kind in ("gaussian", "mixture"):
            P = (
                None
                if ladders
                else (
                    gaussian(settings["dim"], seed=seed)
                    if kind == "gaussian"
                    else gaussian_mixture(settings["dim"], seed=seed)
                )
            )

            def ladder_for(train_seed):
                t1 = time.perf_counter()
                lad = train_mlp_ladder(P, WIDTHS, steps=settings["train_steps"], seed=train_seed)
                echo(
                    f"{kind}: trained widths {list(WIDTHS)} (training seed {train_seed}) in "
                    f"{time.perf_counter() - t1:.0f} s"
                )
                return lad

            if ladders:
                mlp = load_mlp_ladder(os.path.join(ladders, kind))
            else:
                mlp = ladder_for(seed)
                if save_ladders:
                    mlp.save(os.path.join(save_ladders, kind))
            gamma = measure_gamma(mlp, problem_from_spec(mlp.config["problem"], mlp.schedule))
            runs = []
            for i, s in enumerate(run_seeds):
                lad, gam = mlp, gamma
                if retrain and i > 0:  # run seed i also retrains the ladder (same problem)
                    lad = ladder_for(s)
                    gam = measure_gamma(lad, problem_from_spec(lad.config["problem"], lad.schedule))
                runs.append(
                    run_problem(
                        kind,
                        lad,
                        settings=settings,
                        seed=s,
                        gamma=gam,
                        progress=lambda msg, i=i: echo(f"seed {i + 1}/{len(run_seeds)} {msg}"),
                    )
                )
            per.append(aggregate_problem(runs))
    results = {
        "benchmark": "diffusion",
        "command": command or ("mlem bench diffusion" + (" --quick" if quick else "")),
        "quick": quick,
        "torch": torch.__version__,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "seeds": run_seeds,
        "seed_varies": (
            "each run seed redraws x_T, the Brownian path, the DDPM noise, the ML-EM level draws, the "
            "samples delta_l(t) is measured on and (mixture) the exact reference samples, the SW "
            "projections and the floor's exact sets; "
            + (
                "each run seed also retrains the ladders (training seed = run seed; the problems are those of --seed)"
                if retrain
                else "the problems and the trained ladders are the same for every seed (trained once with --seed)"
            )
        ),
        "retrain": bool(retrain),
        "band": BAND,
        "target_factors": list(TARGET_FACTORS),
        "labels": LABELS,
        "problems": per,
        "seconds": time.perf_counter() - t0,
    }
    write_json(out, results)
    if plot_path:
        plot(results, plot_path)
    for line in table_lines(results):
        echo(line)
    return results

"""Do plans that know the sampler predict what ML-EM does inside it? (``mlem bench samplers``)

For every sampler the ladder's calibration has measured (``mlem calibrate --ladder DIR --samplers``)
and every budget, on ``n`` noise images that the calibration never saw (its own seed + 1):

* ``ML-EM inside S``: ``pipe(method="mlem", sampler=S, budget=B)``, planned by
  ``Calibration.plan(budget=B, sampler=S)``; its **measured** error (RMS over images of the
  Euclidean distance to S's converged solution: the top model alone with ``ref_steps`` steps
  of S, same noise and Brownian path) against the plan's **predicted** error;
* ``S alone``: the top model with S at ``floor(B)`` steps (the same cost), measured and as
  predicted by S's measured curve;
* ``best single``: the single-model run the plan names as the cheapest to reach ML-EM's error
  (``plan.best_single``), measured against its own sampler's converged solution.

``helps`` is predicted by the plan (ML-EM beats the best single-model run at its cost); it is
measured by comparing ML-EM's squared errors with those of ``plan.best_at_budget`` (same
noise: paired per-image differences, standard error of their mean) and counts as resolved
where the difference exceeds 2 standard errors. Costs: counted top-level equivalents per
sample and single-thread CPU seconds per sample.
"""

from __future__ import annotations

import math
import platform
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .._io import write_json
from ..calibration.samplers import rms_error, squared_distances
from .common import single_thread

__all__ = ["SETTINGS", "run_sampler_bench"]

SETTINGS = {
    "full": {"n": 32, "budgets": (5, 10, 20, 40, 100), "ref_steps": 500},
    "quick": {"n": 4, "budgets": (4, 8), "ref_steps": 20},
}
Z = 2.0  # differences within Z standard errors are not resolved
RATIO_TARGET = 1.5  # predicted / measured error within this factor (either way)


def _rms(sq: torch.Tensor) -> Dict:
    error, error_se, _, _ = rms_error(sq)
    return {"error": error, "error_se": error_se}


def run_sampler_bench(
    ladder: str,
    *,
    quick: bool = False,
    n: Optional[int] = None,
    budgets: Optional[Sequence[float]] = None,
    samplers: Optional[Sequence[str]] = None,
    seed: Optional[int] = None,
    out: Optional[str] = "results/samplers.json",
    plot_path: Optional[str] = "results/samplers.png",
    command: Optional[str] = None,
    echo: Callable[[str], None] = print,
) -> Dict:
    """Run the comparison (module docstring); write and return the results.

    Args:
        ladder: a ladder folder whose calibration has measured samplers.
        quick: the small settings of :data:`SETTINGS` (for tests).
        n, budgets: override the settings' images per run and budgets (top-level equivalents per sample).
        samplers: which measured samplers (default: all the calibration measured).
        seed: the noise seed (default: a seed the calibration did not use).
    """
    from ..images.pipeline import MultilevelPipeline

    cfg = dict(SETTINGS["quick" if quick else "full"])
    n = cfg["n"] if n is None else int(n)
    budgets = tuple(cfg["budgets"] if budgets is None else budgets)
    pipe = MultilevelPipeline.from_pretrained(ladder)
    cal = pipe.calibration
    if cal is None or not cal.samplers:
        raise ValueError(
            f"{ladder}: its calibration has measured no samplers; run "
            f"`mlem calibrate --ladder {ladder} --samplers em,ddim,euler_ode,dpmpp_2m` first"
        )
    samplers = tuple(samplers or cal.samplers)
    for s in samplers:
        cal.sampler_fit(s)  # a clear error for one it has not measured
    ref_steps = cfg["ref_steps"]
    seed = 1 if seed is None else int(seed)

    def run(method, **kw):
        start = time.perf_counter()
        res = pipe(n, method=method, generator=torch.Generator().manual_seed(seed), **kw)
        return res, (time.perf_counter() - start) / n

    rows: List[Dict] = []
    single: Dict = {}  # (sampler, steps) -> squared distances of the top model alone: each run once

    def alone_sq(sampler: str, steps: int):
        if (sampler, steps) not in single:
            res, wall = run(sampler, steps=steps)
            single[sampler, steps] = (squared_distances(res.x, refs[sampler]), res, wall)
        return single[sampler, steps]

    with single_thread(), torch.no_grad():
        refs = {}
        for s in sorted(set(samplers) | set(cal.samplers)):
            echo(f"reference: {s}, {ref_steps} steps")
            refs[s] = run(s, steps=ref_steps)[0].x
        for s in samplers:
            fit = cal.samplers[s]
            for b in budgets:
                plan = pipe.plan(b, sampler=s)
                ml, ml_wall = run("mlem", sampler=s, budget=b)
                sq_ml = squared_distances(ml.x, refs[s])
                same_steps = plan.same_sampler["steps"]
                sq_alone, alone, alone_wall = alone_sq(s, same_steps)
                at = plan.best_at_budget
                sq_at = alone_sq(at["sampler"], at["steps"])[0]
                best = plan.best_single
                best_meas = None if best is None else _rms(alone_sq(best["sampler"], best["steps"])[0])["error"]
                diff = sq_ml - sq_at
                diff_mean, diff_se = float(diff.mean()), float(diff.std()) / math.sqrt(n)
                resolved = abs(diff_mean) > Z * diff_se
                measured_helps = diff_mean < 0
                m = _rms(sq_ml)
                row = {
                    "sampler": s,
                    "family": fit.family,
                    "budget": b,
                    "plan": {
                        "levels": [l + 1 for l in plan.levels],
                        "steps": plan.steps,
                        "mu": plan.mu,
                        "predicted_error": plan.error,
                        "step_error": plan.step_error,
                        "randomization": plan.randomization,
                        "predicted_top_equivalents": plan.top_equivalents,
                        "helps": plan.helps,
                        "speedup": plan.speedup,
                        "same_sampler": plan.same_sampler,
                        "best_single": best,
                        "best_at_budget": at,
                        "message": plan.message,
                    },
                    "mlem": {
                        **m,
                        "top_equivalents": ml.report["top_equivalents_per_sample"],
                        "wall_seconds_per_sample": ml_wall,
                    },
                    "alone": {
                        **_rms(sq_alone),
                        "steps": same_steps,
                        "predicted_error": plan.same_sampler["error"],
                        "top_equivalents": alone.report["top_equivalents_per_sample"],
                        "wall_seconds_per_sample": alone_wall,
                    },
                    "best_at_budget_measured": _rms(sq_at),
                    "best_single_measured_error": best_meas,
                    "prediction_ratio": plan.error / m["error"],
                    "within_target": 1 / RATIO_TARGET <= plan.error / m["error"] <= RATIO_TARGET,
                    "paired_sq_difference": diff_mean,
                    "paired_sq_difference_se": diff_se,
                    "measured_helps": measured_helps,
                    "resolved": resolved,
                    "helps_right": (plan.helps == measured_helps) if resolved else None,
                }
                rows.append(row)
                echo(
                    f"{s:>9} budget {b:>5g}: ML-EM error {m['error']:.4g} +- {m['error_se']:.2g} (plan "
                    f"{plan.error:.4g}, ratio {row['prediction_ratio']:.2f}) for {row['mlem']['top_equivalents']:.3g} "
                    f"top-eq; {s} alone {same_steps} steps {row['alone']['error']:.4g}; best single at this cost "
                    f"{at['sampler']} {at['steps']} steps {row['best_at_budget_measured']['error']:.4g}; helps: plan "
                    f"{plan.helps}, measured {measured_helps if resolved else 'not resolved'}"
                )
    within = [r["within_target"] for r in rows]
    judged = [r["helps_right"] for r in rows if r["helps_right"] is not None]
    summary = {
        "runs": len(rows),
        "prediction_within_1.5x": sum(within),
        "prediction_ratio_range": [min(r["prediction_ratio"] for r in rows), max(r["prediction_ratio"] for r in rows)],
        "helps_resolved": len(judged),
        "helps_right": sum(judged),
        "mlem_helps_measured": sum(1 for r in rows if r["resolved"] and r["measured_helps"]),
    }
    echo(
        f"plan error within {RATIO_TARGET}x of measured in {summary['prediction_within_1.5x']}/{len(rows)} runs "
        f"(ratios {summary['prediction_ratio_range'][0]:.2f}..{summary['prediction_ratio_range'][1]:.2f}); helps right "
        f"in {summary['helps_right']}/{summary['helps_resolved']} resolved comparisons; ML-EM measured better than "
        f"the best single model at equal cost in {summary['mlem_helps_measured']}"
    )
    result = {
        "benchmark": "samplers",
        "command": command,
        "ladder": ladder,
        "quick": quick,
        "n": n,
        "seed": seed,
        "ref_steps": ref_steps,
        "budgets": list(budgets),
        "noise": "seeded by `seed`; the calibration measured its curves on other noise (its own seed, 0 by default)",
        "error": (
            "RMS over images of the Euclidean distance (data scale [-1, 1], 1x16x16) to the sampler's converged "
            "solution (the top model alone with ref_steps steps of that sampler, same noise)"
        ),
        "machine": f"{platform.processor() or platform.machine()}, 1 torch thread, shared CPU",
        "fits": {s: cal.samplers[s].to_dict() for s in cal.samplers},
        "rows": rows,
        "summary": summary,
    }
    if plot_path:
        _plot(rows, plot_path)
        result["plot"] = plot_path
    if out:
        write_json(out, result)
    return result


def _plot(rows: List[Dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._io import atomic_write

    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    fig, axes = plt.subplots(1, len(samplers), figsize=(4.2 * len(samplers), 3.6), squeeze=False)
    for ax, s in zip(axes[0], samplers):
        rs = [r for r in rows if r["sampler"] == s]
        ax.errorbar(
            [r["alone"]["top_equivalents"] for r in rs],
            [r["alone"]["error"] for r in rs],
            yerr=[2 * r["alone"]["error_se"] for r in rs],
            fmt="o-",
            color="C0",
            label=f"{s}, top model alone",
        )
        ax.plot(
            [r["alone"]["top_equivalents"] for r in rs],
            [r["alone"]["predicted_error"] for r in rs],
            "x",
            color="C0",
            label="  predicted (its curve)",
        )
        ax.errorbar(
            [r["mlem"]["top_equivalents"] for r in rs],
            [r["mlem"]["error"] for r in rs],
            yerr=[2 * r["mlem"]["error_se"] for r in rs],
            fmt="s-",
            color="C3",
            label=f"ML-EM inside {s}",
        )
        ax.plot(
            [r["plan"]["predicted_top_equivalents"] for r in rs],
            [r["plan"]["predicted_error"] for r in rs],
            "+",
            color="C3",
            markersize=10,
            label="  predicted (plan)",
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("top-level equivalents per sample")
        ax.set_ylabel(f"RMS distance to {s}'s converged solution")
        ax.set_title(s)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)

"""``mlem bench htmc``: cost exponents of EM and ML-EM on the synthetic HTMC family.

For each gamma, on ``htmc(gamma)`` (level l: error ~2^-l, cost 2^(gamma (l-1)) units):

* EM is swept over (level, steps); ML-EM over (levels used 1..L, rate scale, steps) with
  the closed-form rates lambda_l = mu delta_l / sqrt(C_l) (docs/method.md, "Choosing the rates"; the scale
  mu is swept through the top level's rate lambda_L, in firings per unit time; delta_l
  measured as the RMS of f^l - f^{l-1} along EM trajectories), and over the configurations
  that :meth:`Calibration.plan` chooses (levels kept, mu, steps) for a range of targets;
* every run shares one Brownian path per sample with a fine-step reference run of the
  true drift; error = RMS over paths of |X_1 - X_1^ref|;
* each method keeps its Pareto front (cost in units of one level-1 evaluation), and the
  slope of log(cost) against log(1/error) is fitted over the common error range;
* theory: EM gamma + 1; ML-EM gamma for gamma > 2, 2 (the Monte Carlo rate) for gamma < 2.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..calibration import calibrate
from ..engine import BrownianPath, solve
from ..problems import htmc
from .common import fit_slope, pareto_front, rms_error, single_thread, write_json

#: Fits and speedups use errors of at least this many times the ladder's floor.
FLOOR_MARGIN = 2.0


def measure_deltas(problem, x0: torch.Tensor, *, steps: int = 32, noise=None) -> List[float]:
    """delta_l = RMS over states of |f^l - f^{l-1}| along EM trajectories of the top level (l = 2..K)."""
    lad = problem.ladder
    sol = solve(
        lad,
        x0,
        t0=problem.t0,
        t1=problem.t1,
        steps=steps,
        diffusion=problem.diffusion,
        method="em",
        noise=noise,
        save_every=1,
    )
    sq = [0.0] * len(lad)
    for t, x in zip(sol.ts.tolist()[:-1], sol.xs[:-1]):
        outs = [f(x, t) for f in lad]
        for l in range(1, len(lad)):
            sq[l] += float((outs[l] - outs[l - 1]).pow(2).sum(1).mean())
    n = len(sol.ts) - 1
    return [math.sqrt(s / n) for s in sq[1:]]


def closed_form_rates(costs: Sequence[float], deltas: Sequence[float], top_rate: float) -> List[float]:
    """lambda_l = mu delta_l / sqrt(C_l), C_l = c_l + c_{l-1} (l = 2..K), with the scale mu
    chosen so that the top level fires ``top_rate`` times per unit time (lambda_K = top_rate)."""
    C = [costs[l] + costs[l - 1] for l in range(1, len(costs))]
    mu = top_rate * math.sqrt(C[-1]) / deltas[-1]
    return [mu * d / math.sqrt(c) for d, c in zip(deltas, C)]


def cost_to_reach(front: Sequence[Sequence[float]], error: float) -> float:
    """Least cost on a Pareto front whose error is <= ``error`` (inf if none)."""
    costs = [c for c, e in front if e <= error]
    return min(costs) if costs else math.inf


def _fit_front(front, lo: float, hi: float) -> Optional[Dict]:
    pts = [(c, e) for c, e in front if lo <= e <= hi]
    if len(pts) < 3:
        return None
    slope, se = fit_slope([c for c, _ in pts], [e for _, e in pts])
    return {
        "slope": slope,
        "stderr": se,
        "points": len(pts),
        "error_range": [min(e for _, e in pts), max(e for _, e in pts)],
    }


def run_gamma(
    gamma: float,
    *,
    levels: int = 8,
    dim: int = 4,
    n_paths: int = 256,
    em_steps: Sequence[int] = tuple(2**k for k in range(1, 13)),
    mlem_steps: Sequence[int] = (512, 2048),
    top_rates: Sequence[float] = tuple(2.0**k for k in range(-2, 10)),
    ref_steps: int = 32768,
    plan_targets: int = 8,
    seed: int = 0,
    progress: Callable[[str], None] = lambda s: None,
) -> Dict:
    """Sweep EM and ML-EM on ``htmc(gamma)`` and return runs, fronts, slopes and speedups."""
    P = htmc(gamma, dim=dim, levels=levels, seed=seed)
    x0 = P.initial_state(n_paths, seed=seed + 1)
    depth = max(ref_steps, max(em_steps), max(mlem_steps)).bit_length() + 1
    W = BrownianPath(x0.shape, P.t0, P.t1, seed=seed + 2, dtype=x0.dtype, depth=depth)
    kw = dict(t0=P.t0, t1=P.t1, diffusion=P.diffusion, noise=W)
    t_start = time.perf_counter()
    ref = solve(P.true_ladder(), x0, steps=ref_steps, method="em", **kw).x
    costs = P.ladder.costs
    deltas = measure_deltas(P, x0, noise=W)
    runs = []
    for L in range(levels):
        for n in em_steps:
            s = solve(P.ladder, x0, steps=n, method="em", level=L, **kw)
            runs.append(
                {"method": "em", "level": L + 1, "steps": n, "cost": s.cost_per_sample, "error": rms_error(s.x, ref)}
            )
    progress(f"gamma={gamma}: EM sweep done ({time.perf_counter() - t_start:.0f} s)")
    g = torch.Generator().manual_seed(seed + 3)
    for L in range(2, levels + 1):
        sub = P.ladder.select(range(L))
        for n in mlem_steps:
            for top_rate in top_rates:
                rates = closed_form_rates(costs[:L], deltas[: L - 1], top_rate)
                s = solve(sub, x0, steps=n, method="mlem", rates=rates, generator=g, **kw)
                runs.append(
                    {
                        "method": "mlem",
                        "levels": L,
                        "steps": n,
                        "top_rate": top_rate,
                        "cost": s.cost_per_sample,
                        "error": rms_error(s.x, ref),
                    }
                )
                # Past the point where every correction fires at every step, larger mu only repeats EM.
                if all(r * (P.t1 - P.t0) / n >= 1 for r in rates):
                    break
    # Calibrated plans: for each top level L, calibrate the sub-ladder 1..L and let
    # Calibration.plan choose mu, the step count and which levels to keep for a range of
    # target errors (the way the library is meant to be used).
    for L in range(2, levels + 1):
        sub = P.ladder.select(range(L))
        cal = calibrate(
            sub,
            x0[:64],
            t0=P.t0,
            t1=P.t1,
            diffusion=P.diffusion,
            reference=P.true_drift,
            timing="given",
            generator=torch.Generator().manual_seed(seed + 4),
        )
        for target in np.geomspace(1.1 * cal.top_bias, max(0.5, 2 * cal.top_bias), plan_targets):
            try:
                plan = cal.plan(target=float(target))
            except ValueError:
                continue
            s = solve(plan.select(sub), x0, steps=plan.steps, method="mlem", rates=plan.rates, generator=g, **kw)
            runs.append(
                {
                    "method": "mlem",
                    "levels": L,
                    "kept": [l + 1 for l in plan.levels],
                    "steps": plan.steps,
                    "mu": plan.mu,
                    "target": float(target),
                    "planned_cost": plan.ladder_cost,
                    "cost": s.cost_per_sample,
                    "error": rms_error(s.x, ref),
                }
            )
    progress(f"gamma={gamma}: ML-EM sweep done ({time.perf_counter() - t_start:.0f} s)")
    fronts = {m: pareto_front((r["cost"], r["error"]) for r in runs if r["method"] == m) for m in ("em", "mlem")}
    # The ladder's floor: EM with the top level and the most steps (its own bias). Near it
    # every method's cost blows up (ML-EM needs ever more top-level firings to shrink its
    # added variance below an ever smaller margin), which says nothing about the exponents;
    # slopes and speedups are taken over errors between 2x and 20x the floor, one decade.
    floor = min(e for _, e in fronts["em"])
    lo, hi = FLOOR_MARGIN * floor, min(10 * FLOOR_MARGIN * floor, max(e for _, e in fronts["em"]))
    fits = {m: _fit_front(fronts[m], lo, hi) for m in fronts}
    speedups = []
    for e in np.geomspace(hi, lo, 6).tolist() + [1.25 * floor]:
        c_em, c_ml = cost_to_reach(fronts["em"], e), cost_to_reach(fronts["mlem"], e)
        speedups.append(
            {
                "error": e,
                "em_cost": c_em,
                "mlem_cost": c_ml,
                "in_fit_range": e >= lo * (1 - 1e-9),
                "speedup": c_em / c_ml if math.isfinite(c_ml) and math.isfinite(c_em) else None,
            }
        )
    theory = {"em": gamma + 1, "mlem": max(gamma, 2.0)}
    return {
        "gamma": gamma,
        "levels": levels,
        "dim": dim,
        "n_paths": n_paths,
        "ref_steps": ref_steps,
        "costs": list(costs),
        "deltas": deltas,
        "runs": runs,
        "fronts": {m: [list(p) for p in f] for m, f in fronts.items()},
        "floor": floor,
        "fit_range": [lo, hi],
        "fits": fits,
        "theory_slopes": theory,
        "speedups": speedups,
        "seconds": time.perf_counter() - t_start,
    }


def plot(results: Dict, path: str) -> None:
    """Log-log cost vs error: fronts, fitted slopes in the legend, theory slopes dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = results["per_gamma"]
    fig, axes = plt.subplots(1, len(per), figsize=(5 * len(per), 4.2), squeeze=False)
    colors = {"em": "tab:blue", "mlem": "tab:red"}
    labels = {"em": "EM (best level, steps)", "mlem": "ML-EM"}
    for ax, r in zip(axes[0], per):
        lo, hi = r["fit_range"]
        for m in ("em", "mlem"):
            front = np.array(r["fronts"][m])
            fit = r["fits"][m]
            lab = labels[m] + (f": slope {fit['slope']:.2f} ± {fit['stderr']:.2f}" if fit else "")
            ax.loglog(front[:, 1], front[:, 0], "o-", color=colors[m], ms=3, label=lab)
            # Theory line through the front's point nearest the middle of the fit range.
            mid = math.sqrt(lo * hi)
            i = int(np.argmin(np.abs(np.log(front[:, 1] / mid))))
            e_line = np.geomspace(lo, hi, 10)
            k = r["theory_slopes"][m]
            ax.loglog(
                e_line,
                front[i, 0] * (front[i, 1] / e_line) ** k,
                "--",
                color=colors[m],
                alpha=0.6,
                label=f"theory: slope {k:g}",
            )
        ax.axvspan(lo, hi, color="0.9", zorder=0)
        ax.set_title(f"gamma = {r['gamma']:g}")
        ax.set_xlabel("RMS error vs true-drift reference")
        ax.set_ylabel("cost per sample (units of level-1 evaluations)")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("HTMC family: cost to reach an error (shaded: slope-fit range)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_bench(
    *,
    gammas: Sequence[float] = (1.5, 2.5, 4.0),
    quick: bool = False,
    out: str = "results/htmc.json",
    plot_path: Optional[str] = "results/htmc.png",
    n_paths: int = 256,
    seed: int = 0,
    echo: Callable[[str], None] = print,
) -> Dict:
    """Run the benchmark for each gamma, write JSON (and the plot), print a table."""
    settings = dict(n_paths=n_paths, seed=seed)
    if quick:
        settings.update(
            levels=6,
            em_steps=tuple(2**k for k in range(1, 11)),
            mlem_steps=(512,),
            top_rates=tuple(4.0**k for k in range(-1, 5)),
            ref_steps=4096,
            plan_targets=4,
        )
    per = []
    with single_thread():  # the states are tiny (batch x dim)
        for gamma in gammas:
            per.append(run_gamma(float(gamma), progress=echo, **settings))
    results = {
        "benchmark": "htmc",
        "command": "mlem bench htmc" + (" --quick" if quick else ""),
        "quick": quick,
        "torch": torch.__version__,
        "per_gamma": per,
    }
    write_json(out, results)
    if plot_path:
        plot(results, plot_path)
    echo(
        f"{'gamma':>6} {'EM slope':>16} {'ML-EM slope':>16} {'theory EM/ML-EM':>16}   "
        "speedup (EM cost / ML-EM cost) at errors, high -> low"
    )
    for r in per:
        f = r["fits"]
        fmt = lambda x: f"{x['slope']:.2f} ± {x['stderr']:.2f}" if x else "n/a"  # noqa: E731
        sp = ", ".join(
            (f"{s['error']:.3g}: {s['speedup']:.1f}x" if s["speedup"] else f"{s['error']:.3g}: n/a")
            + ("" if s["in_fit_range"] else " (1.25x floor)")
            for s in r["speedups"]
        )
        th = r["theory_slopes"]
        echo(f"{r['gamma']:>6g} {fmt(f['em']):>16} {fmt(f['mlem']):>16} {th['em']:>8g}/{th['mlem']:<7g}   {sp}")
    return results

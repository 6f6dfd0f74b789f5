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
for the whole batch.  Each method keeps its Pareto front; the table gives the cost each needs
to reach stated errors (multiples of the best error of EM with the top model).
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
    "full": dict(dim=8, n_gauss=512, n_mix=1000, train_steps=2000, ref_steps=8192,
                 em_steps=(10, 20, 50, 100, 200, 500, 1000), ode_steps=(5, 10, 20, 50, 100),
                 mlem_steps=(100, 200, 500, 1000, 2000), mlem_ode_steps=(10, 20, 50, 100),
                 top_fires=(0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256), stitch_fractions=(0.2, 0.4, 0.6)),
    "quick": dict(dim=8, n_gauss=128, n_mix=400, train_steps=300, ref_steps=2048,
                  em_steps=(10, 30, 100, 300), ode_steps=(5, 10, 20),
                  mlem_steps=(100, 300), mlem_ode_steps=(10, 20),
                  top_fires=(1, 4, 16, 64), stitch_fractions=(0.4,)),
}
WIDTHS = (32, 64, 128, 256)
T_MIN = 1e-4  # where "em" stops (and the Brownian path starts)
TARGET_FACTORS = (1.0, 1.1, 1.5, 3.0)  # stated errors: multiples of EM-top's best error
SINGLE = ("em_top", "ddpm_top", "ddim_top", "dpmpp_top")
LABELS = {
    "em_top": "EM (top)", "ddpm_top": "DDPM (top)", "ddim_top": "DDIM (top)", "dpmpp_top": "DPM-Solver++ 2M (top)",
    "tstitch_em": "T-Stitch (EM)", "tstitch_dpmpp": "T-Stitch (DPM++)", "mlem_em": "ML-EM (EM)",
    "mlem_dpmpp": "ML-EM (DPM++)",
}


class InterpolatedRate:
    """t -> scale * delta(t), delta interpolated linearly in log t between measured points."""

    def __init__(self, times: Sequence[float], values: Sequence[float], scale: float):
        self.logt = np.log(np.asarray(times, dtype=float))
        self.values = np.asarray(values, dtype=float)
        self.scale = float(scale)

    def __call__(self, t) -> float:
        return self.scale * float(np.interp(math.log(max(float(t), 1e-12)), self.logt, self.values))


def drift_deltas(models: Sequence, problem, *, n: int = 512, times: int = 48, t_min: float = T_MIN,
                 seed: int = 0) -> Dict:
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


def run_problem(kind: str, mlp, *, settings: Dict, seed: int = 0, progress: Callable[[str], None] = print) -> Dict:
    """Sweep every method on one problem with a trained :class:`~multilevel_em.diffusion.mlp.MLPLadder`."""
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
    gamma = measure_gamma(mlp, problem)
    g = torch.Generator().manual_seed(seed + 11)
    x_T = torch.randn((n, dim), generator=g, dtype=torch.float64)
    depth = max(settings["ref_steps"], 4096).bit_length() + 2
    W = BrownianPath(x_T.shape, T_MIN, 1.0, seed=seed + 12, dtype=x_T.dtype, depth=depth)

    if kind == "gaussian":
        ref_sde = sample(problem.eps, x_T, schedule=sched, steps=settings["ref_steps"], sampler="em", noise=W,
                         t_min=T_MIN).x
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
        floor = {"sw_mean": float(np.mean(sws)), "sw_std": float(np.std(sws, ddof=1)),
                 "mmd2_mean": float(np.mean(mmds)), "mmd2_std": float(np.std(mmds, ddof=1)),
                 "what": "SW / MMD^2 between independent exact sample sets of the same size"}
    runs: List[Dict] = []

    def record(method, family, fn, **knobs):
        t0 = time.perf_counter()
        out = fn()
        secs = time.perf_counter() - t0
        err, extra = error(out.x, family)
        runs.append(dict(method=method, **knobs, cost=out.cost, seconds=secs, error=err, **extra,
                         evaluations=list(out.evaluations)))

    # Single-model samplers with the top model.
    for N in settings["em_steps"]:
        record("em_top", "sde", lambda: sample(top, x_T, schedule=sched, steps=N, sampler="em", noise=W, t_min=T_MIN),
               steps=N)
        if kind == "gaussian":  # DDPM = DDIM with eta = 1, its noise from the shared path
            record("ddpm_top", "sde", lambda: sample(top, x_T, schedule=sched, steps=N, sampler="ddim", eta=1.0,
                                                     noise=W), steps=N)
        else:
            record("ddpm_top", "sde", lambda: sample(top, x_T, schedule=sched, steps=N, sampler="ddpm",
                                                     generator=torch.Generator().manual_seed(seed + 15)), steps=N)
    for N in settings["ode_steps"]:
        record("ddim_top", "ode", lambda: sample(top, x_T, schedule=sched, steps=N, sampler="ddim"), steps=N)
        record("dpmpp_top", "ode", lambda: sample(top, x_T, schedule=sched, steps=N, sampler="dpmpp_2m"), steps=N)
    progress(f"{kind}: single-model samplers done ({time.perf_counter() - t_start:.0f} s)")

    # T-Stitch: level 1 for the first fraction of the steps, the top model for the rest.
    stitch = Ladder([models[0], top], [costs[0], costs[-1]])
    for f in settings["stitch_fractions"]:
        for N in settings["em_steps"]:
            record("tstitch_em", "sde", lambda: sample(None, x_T, schedule=sched, steps=N, sampler="em", noise=W,
                                                       t_min=T_MIN, stitch=(stitch, [f])), steps=N, fraction=f)
        for N in settings["ode_steps"]:
            record("tstitch_dpmpp", "ode", lambda: sample(None, x_T, schedule=sched, steps=N, sampler="dpmpp_2m",
                                                          stitch=(stitch, [f])), steps=N, fraction=f)
    progress(f"{kind}: T-Stitch done ({time.perf_counter() - t_start:.0f} s)")

    # ML-EM with calibrated time-dependent rates.
    deltas = drift_deltas(models, problem, seed=seed + 16)
    gm = torch.Generator().manual_seed(seed + 17)
    for method, sampler, steps_list, span in (("mlem_em", "em", settings["mlem_steps"], (sched.t_max, T_MIN)),
                                              ("mlem_dpmpp", "dpmpp_2m", settings["mlem_ode_steps"], (1.0, 0.0))):
        for N in steps_list:
            for R in settings["top_fires"]:
                rates = mlem_rates(costs, deltas, R)
                den = MultilevelDenoiser(ladder, rates=rates, generator=gm, schedule=sched)
                opts = dict(noise=W, t_min=T_MIN) if sampler == "em" else {}
                record(method, "sde" if sampler == "em" else "ode",
                       lambda: sample(den, x_T, schedule=sched, steps=N, sampler=sampler, **opts),
                       steps=N, top_fires=R)
                if _saturated(rates, N, deltas["times"], t_start=span[0], t_end=span[1]):
                    break  # every correction fires at every step: larger R only repeats EM-top
    progress(f"{kind}: ML-EM done ({time.perf_counter() - t_start:.0f} s)")

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
        extra = {"fronts_mmd2": {m: [list(p) for p in f] for m, f in fronts_mmd.items()},
                 "best_em_top_mmd2": best_mmd,
                 "table_mmd2": [{"target": f"best EM-top + {k} sd", "mmd2": best_mmd + k * floor["mmd2_std"],
                                 "cost": {m: _cost_to_reach(fronts_mmd[m], best_mmd + k * floor["mmd2_std"])
                                          for m in methods}} for k in (0, 1, 2)]}
    table = []
    for name, target in targets:
        row = {"target": name, "error": target,
               "cost": {m: _cost_to_reach(fronts[m], target) for m in methods},
               "seconds": {m: _cost_to_reach(fronts_s[m], target) for m in methods}}
        reached = [m for m in SINGLE if row["cost"][m] is not None]
        best_single = min(row["cost"][m] for m in reached) if reached else None
        for ml in ("mlem_em", "mlem_dpmpp"):
            c = row["cost"][ml]
            row[f"{ml}_speedup_vs_em_top"] = _ratio(row["cost"]["em_top"], c)
            row[f"{ml}_speedup_vs_best_single"] = _ratio(best_single, c)
        row["best_single"] = min(reached, key=lambda m: row["cost"][m]) if reached else None
        table.append(row)
    return {
        "problem": kind, "dim": dim, "samples": n, "metric": metric, "spec": mlp.config["problem"],
        "ladder": {"widths": mlp.widths, "costs_flops": costs, "depth": mlp.config["depth"],
                   "training": mlp.config.get("training")},
        "gamma": gamma, "deltas": deltas, "statistical_floor": floor, "t_min": T_MIN,
        "ref_steps": settings["ref_steps"] if kind == "gaussian" else None,
        "runs": runs, "fronts": {m: [list(p) for p in f] for m, f in fronts.items()},
        "fronts_seconds": {m: [list(p) for p in f] for m, f in fronts_s.items()},
        "best_em_top_error": best_em, "table": table, **extra, "seconds": time.perf_counter() - t_start,
    }


def _cost_to_reach(front, error: float) -> Optional[float]:
    costs = [c for c, e in front if e <= error + 1e-12 * abs(error)]
    return min(costs) if costs else None


def _ratio(a, b) -> Optional[float]:
    return a / b if a is not None and b is not None else None


# ----------------------------------------------------------------------------- output


def plot(results: Dict, path: str) -> None:
    """Log-log cost vs error: each method's Pareto front, one panel per problem."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    per = results["problems"]
    fig, axes = plt.subplots(1, len(per), figsize=(6 * len(per), 4.6), squeeze=False)
    styles = {"em_top": ("tab:blue", "o-"), "ddpm_top": ("tab:cyan", "v-"), "ddim_top": ("tab:olive", "s-"),
              "dpmpp_top": ("tab:green", "D-"), "tstitch_em": ("tab:purple", "x--"),
              "tstitch_dpmpp": ("tab:pink", "+--"), "mlem_em": ("tab:red", "o-"), "mlem_dpmpp": ("tab:orange", "^-")}
    for ax, r in zip(axes[0], per):
        for m, front in r["fronts"].items():
            if not front:
                continue
            f = np.array(front)
            color, style = styles[m]
            ax.loglog(f[:, 1], f[:, 0], style, color=color, ms=3, label=LABELS[m])
        ax.axvline(r["best_em_top_error"], color="0.6", ls=":", lw=1, label="best EM-top error")
        if r["statistical_floor"]:
            ax.axvline(r["statistical_floor"]["sw_mean"], color="0.3", ls="--", lw=1, label="exact-vs-exact SW")
        ax.set_title(f"{r['problem']} (d={r['dim']}), ladder {_gamma_text(r['gamma'])}")
        worst = max(e for _, e in r["fronts"]["em_top"])
        ax.set_xlim(right=3 * worst)  # rare ML-EM blow-ups at the smallest rates would squash the plot
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(r["metric"] + (" (SDE samplers vs exact-eps SDE, ODE samplers vs exact flow)"
                                     if r["problem"] == "gaussian" else ""), fontsize=8)
        ax.set_ylabel("cost per sample (top-level equivalents)")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("Diffusion sampling with trained MLP ladders: Pareto fronts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _gamma_text(g: Dict, sep: str = " = ") -> str:
    """"gamma = 1.23 ± 0.04"; "gamma n/a" when it was not fitted (a ladder of fewer than 3 levels)."""
    if g.get("gamma") is None:
        return "gamma n/a"
    text = f"gamma{sep}{g['gamma']:.2f}"
    return text + (f" ± {g['gamma_stderr']:.2f}" if g.get("gamma_stderr") is not None else "")


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.3g}" if v < 100 else f"{v:.0f}")


def table_lines(results: Dict) -> List[str]:
    lines = []
    for r in results["problems"]:
        lines.append(f"{r['problem']}: {r['metric']}; ladder widths {r['ladder']['widths']}, "
                     f"{_gamma_text(r['gamma'], sep=' ')}"
                     + (f"; exact-vs-exact SW {r['statistical_floor']['sw_mean']:.3g} ± "
                        f"{r['statistical_floor']['sw_std']:.2g}" if r["statistical_floor"] else ""))
        head = (f"  {'error':>9} " + " ".join(f"{LABELS[m][:14]:>14}" for m in LABELS)
                + "  speedup vs EM-top / vs best single-model: ML-EM (EM); ML-EM (DPM++)")
        lines.append("  cost (top-level equivalents) to reach the error (- = not reached):")
        lines.append(head)
        for row in r["table"]:
            cells = " ".join(f"{_fmt(row['cost'][m]):>14}" for m in LABELS)
            sp = [_fmt(row[f"{ml}_speedup_vs_{ref}"]) for ml in ("mlem_em", "mlem_dpmpp") for ref in ("em_top", "best_single")]
            lines.append(f"  {row['error']:>9.3g} {cells}  {sp[0]}x / {sp[1]}x; {sp[2]}x / {sp[3]}x"
                         f" (best single: {LABELS.get(row['best_single'], 'none')}; target {row['target']})")
        if r.get("table_mmd2"):
            lines.append("  MMD^2 (Gaussian kernel, fixed bandwidth) barely sees rare far outliers, such as ML-EM's "
                         "blow-ups at small rates: read these rows with the SW rows above")
        for row in r.get("table_mmd2", []):
            cells = " ".join(f"{_fmt(row['cost'][m]):>14}" for m in LABELS)
            lines.append(f"  {row['mmd2']:>9.2g} {cells}  (MMD^2 target {row['target']})")
    return lines


def run_bench(*, quick: bool = False, out: str = "results/diffusion.json", plot_path: Optional[str] = "results/diffusion.png",
              ladders: Optional[str] = None, save_ladders: Optional[str] = None, seed: int = 0,
              overrides: Optional[Dict] = None, command: Optional[str] = None,
              echo: Callable[[str], None] = print) -> Dict:
    """Train (or load) the two ladders, sweep every method on both problems, write JSON and the plot, print the table."""
    from ..diffusion.mlp import load_mlp_ladder, train_mlp_ladder
    from ..problems.gaussian import gaussian, gaussian_mixture

    settings = dict(SETTINGS["quick" if quick else "full"])
    settings.update(overrides or {})
    t0 = time.perf_counter()
    per = []
    with single_thread():
        for kind in ("gaussian", "mixture"):
            if ladders:
                mlp = load_mlp_ladder(os.path.join(ladders, kind))
            else:
                P = gaussian(settings["dim"], seed=seed) if kind == "gaussian" else gaussian_mixture(settings["dim"], seed=seed)
                t1 = time.perf_counter()
                mlp = train_mlp_ladder(P, WIDTHS, steps=settings["train_steps"], seed=seed)
                echo(f"{kind}: trained widths {list(WIDTHS)} in {time.perf_counter() - t1:.0f} s")
                if save_ladders:
                    mlp.save(os.path.join(save_ladders, kind))
            per.append(run_problem(kind, mlp, settings=settings, seed=seed, progress=echo))
    results = {
        "benchmark": "diffusion",
        "command": command or ("mlem bench diffusion" + (" --quick" if quick else "")),
        "quick": quick, "torch": torch.__version__, "settings": {k: list(v) if isinstance(v, tuple) else v
                                                                  for k, v in settings.items()},
        "target_factors": list(TARGET_FACTORS), "labels": LABELS, "problems": per,
        "seconds": time.perf_counter() - t0,
    }
    write_json(out, results)
    if plot_path:
        plot(results, plot_path)
    for line in table_lines(results):
        echo(line)
    return results

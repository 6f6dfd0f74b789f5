"""The main job: calibrate a ladder, plan ML-EM, and compare it with EM at equal error.

On the synthetic HTMC problem with gamma = 4 (level l costs 2^(4(l-1)) units and has
error ~2^-l; see :mod:`multilevel_em.problems.htmc`):

1. :func:`~multilevel_em.calibrate` measures the ladder (costs, level differences, gamma,
   EM's step error) on a few trajectories;
2. EM with the top level is run at several step counts;
3. ML-EM is planned by :meth:`Calibration.plan` for a few target errors and run;
4. each ML-EM run is compared with the cheapest EM run that is at least as accurate.

Errors are RMS over sample paths against a fine-step run with the true drift on the
same Brownian paths; costs are per sample, in evaluations of the top level.
"""

from __future__ import annotations

import time
from typing import Callable, Dict

import torch

from ..bench.common import em_cost_at, rms_error, single_thread
from ..calibration import calibrate
from ..engine import BrownianPath, solve
from ..problems import htmc


def run_demo(*, quick: bool = False, n_paths: int = 256, seed: int = 0, echo: Callable = print) -> Dict:
    """Run the demo, print its table through ``echo`` and return it as a dict."""
    with single_thread():
        return _run(quick=quick, n_paths=n_paths, seed=seed, echo=echo)


def _run(*, quick: bool, n_paths: int, seed: int, echo: Callable) -> Dict:
    P = htmc(4.0, levels=6, seed=seed)
    x0 = P.initial_state(n_paths, seed=seed + 1)
    ref_steps = 4096 if quick else 16384
    W = BrownianPath(x0.shape, P.t0, P.t1, seed=seed + 2, dtype=x0.dtype, depth=ref_steps.bit_length() + 1)
    kw = dict(t0=P.t0, t1=P.t1, diffusion=P.diffusion, noise=W)
    t_start = time.perf_counter()
    ref = solve(P.true_ladder(), x0, steps=ref_steps, method="em", **kw).x
    cal = calibrate(
        P.ladder,
        x0[: min(64, n_paths)],
        t0=P.t0,
        t1=P.t1,
        diffusion=P.diffusion,
        reference=P.true_drift,
        timing="given",
        generator=torch.Generator().manual_seed(seed + 3),
    )
    echo(f"Problem: {P.ladder!r}")
    echo(
        f"Calibrated gamma = {cal.gamma:.2f} ± {cal.gamma_se:.2f} (true {P.gamma:g}); "
        f"EM step-error coefficient a = {cal.step_error:.2f}; top-level bias {cal.top_bias:.4f}"
    )
    rows, em_lower = [], {}
    K = len(P.ladder)
    for level in range(K - 3, K):
        for n in [16, 32, 64, 128, 256, 512, 1024]:
            t = time.perf_counter()
            s = solve(P.ladder, x0, steps=n, method="em", level=level, **kw)
            row = dict(
                method="em",
                steps=n,
                levels=str(level + 1),
                top_equivalents=s.top_equivalents,
                error=rms_error(s.x, ref),
                seconds=time.perf_counter() - t,
            )
            (rows.append(row) if level == K - 1 else em_lower.setdefault(level, []).append(row))
    g = torch.Generator().manual_seed(seed + 4)
    for target in [0.03, 0.015] if quick else [0.04, 0.03, 0.02, 0.015, 0.0125]:
        plan = cal.plan(target=target)
        t = time.perf_counter()
        s = solve(plan.select(P.ladder), x0, steps=plan.steps, method="mlem", rates=plan.rates, generator=g, **kw)
        rows.append(
            dict(
                method="mlem",
                steps=plan.steps,
                levels=",".join(str(l + 1) for l in plan.levels),
                target=target,
                predicted_top_equivalents=plan.top_equivalents,
                top_equivalents=s.top_equivalents,
                error=rms_error(s.x, ref),
                seconds=time.perf_counter() - t,
            )
        )
    em_top = [(r["top_equivalents"], r["error"]) for r in rows if r["method"] == "em"]
    em_curves = [em_top] + [[(r["top_equivalents"], r["error"]) for r in v] for v in em_lower.values()]
    for r in rows:
        if r["method"] == "mlem":
            r["em_cost_at_equal_error"] = em_cost_at(em_top, r["error"])
            r["speedup"] = r["em_cost_at_equal_error"] / r["top_equivalents"] if r["em_cost_at_equal_error"] else None
            best = [c for c in (em_cost_at(curve, r["error"]) for curve in em_curves) if c is not None]
            r["best_em_cost_at_equal_error"] = min(best) if best else None
            r["speedup_vs_best_em"] = min(best) / r["top_equivalents"] if best else None
    echo("")
    echo(
        f"{'method':<7}{'levels':>10}{'steps':>7}{'target':>8}{'planned':>9}{'cost':>9}{'RMS error':>11}"
        f"{'EM-top cost':>13}{'speedup':>9}{'best-EM cost':>14}{'speedup':>9}"
    )

    def fmt(v, spec):
        return "" if v is None else format(v, spec)

    for r in rows:
        echo(
            f"{r['method']:<7}{r['levels']:>10}{r['steps']:>7}{fmt(r.get('target'), 'g'):>8}"
            f"{fmt(r.get('predicted_top_equivalents'), '.2f'):>9}{r['top_equivalents']:>9.2f}{r['error']:>11.4f}"
            f"{fmt(r.get('em_cost_at_equal_error'), '.1f'):>13}{fmt(r.get('speedup'), '.1f'):>9}"
            f"{fmt(r.get('best_em_cost_at_equal_error'), '.1f'):>14}{fmt(r.get('speedup_vs_best_em'), '.1f'):>9}"
        )
    echo("")
    echo(
        "target, planned: the error asked of Calibration.plan and the cost it predicted. "
        "cost: evaluations of the top level per sample (level l counts 2^(4(l-6))). RMS error: over "
        f"{n_paths} paths against a {ref_steps}-step run of the true drift on the same Brownian paths."
    )
    echo(
        "EM-top cost: EM with the top level at ML-EM's error (log-log interpolation between step counts); "
        f"best-EM cost: the cheapest of EM with levels {K - 2}..{K}. speedup: that cost / ML-EM's cost."
    )
    echo(f"({time.perf_counter() - t_start:.1f} s)")
    return {
        "problem": "htmc(gamma=4, levels=6)",
        "n_paths": n_paths,
        "ref_steps": ref_steps,
        "calibration": {
            "gamma": cal.gamma,
            "gamma_stderr": cal.gamma_se,
            "step_error": cal.step_error,
            "bias": cal.top_bias,
        },
        "rows": rows,
    }

"""The main job: ML-EM against EM with the top level, on the synthetic HTMC problem.

On a gamma = 4 ladder (level l costs 2^(4(l-1)), error 2^-l), EM with the top level is
swept over step counts, and ML-EM over the rate scale mu with the closed-form rates
lambda_l = mu delta_l / sqrt(C_l) (METHOD.md section 3; delta_l = 2^-l is known for this
family).  Errors are RMS against a fine-step run with the true drift on the same
Brownian paths.
"""

from __future__ import annotations

import math
import time
from typing import Optional

import torch

from ..engine import BrownianPath, solve
from ..problems import htmc
from .common import rms_error


def run_demo(*, quick: bool = False, n_paths: int = 256, seed: int = 0, echo=print) -> dict:
    """Run the demo and return its table as a dict (also printed through ``echo``)."""
    P = htmc(4.0, dim=4, levels=5, seed=seed)
    x0 = P.initial_state(n_paths, seed=seed + 1)
    W = BrownianPath(x0.shape, P.t0, P.t1, seed=seed + 2, dtype=x0.dtype, depth=14)
    ref = solve(P.true_ladder(), x0, t0=P.t0, t1=P.t1, steps=4096, diffusion=P.diffusion, method="em", noise=W).x
    K = len(P.ladder)
    C = [P.ladder.costs[0]] + [P.ladder.costs[l] + P.ladder.costs[l - 1] for l in range(1, K)]
    deltas = [2.0 ** -(l + 1) for l in range(K)]
    rows = []
    em_steps = [16, 64, 256] if quick else [16, 32, 64, 128, 256, 512]
    for n in em_steps:
        t = time.perf_counter()
        s = solve(P.ladder, x0, t0=P.t0, t1=P.t1, steps=n, diffusion=P.diffusion, method="em", noise=W)
        rows.append(dict(method="em", steps=n, mu=None, top_equivalents=s.top_equivalents,
                         error=rms_error(s.x, ref), seconds=time.perf_counter() - t))
    mus = [2.0, 8.0, 32.0] if quick else [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    g = torch.Generator().manual_seed(seed + 3)
    for mu in mus:
        rates = [mu * deltas[l] / math.sqrt(C[l]) * math.sqrt(C[-1]) for l in range(1, K)]
        t = time.perf_counter()
        s = solve(P.ladder, x0, t0=P.t0, t1=P.t1, steps=512, diffusion=P.diffusion, method="mlem",
                  rates=rates, noise=W, generator=g)
        rows.append(dict(method="mlem", steps=512, mu=mu, top_equivalents=s.top_equivalents,
                         error=rms_error(s.x, ref), seconds=time.perf_counter() - t))
    echo(f"{'method':<7}{'steps':>7}{'mu':>7}{'cost (top evals)':>18}{'RMS error':>12}{'seconds':>10}")
    for r in rows:
        mu = "" if r["mu"] is None else f"{r['mu']:g}"
        echo(f"{r['method']:<7}{r['steps']:>7}{mu:>7}{r['top_equivalents']:>18.2f}{r['error']:>12.4f}{r['seconds']:>10.2f}")
    return {"problem": "htmc(gamma=4, dim=4, levels=5)", "n_paths": n_paths, "rows": rows}

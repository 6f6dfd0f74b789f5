"""Cost vs KID on a UNet ladder: EM with the top level, DDIM, DPM-Solver++ 2M and ML-EM.

Every run samples the same ``n`` initial noises (one seed) and is scored against the whole
digits data set with the unbiased KID on the digit classifier's features (and pixel sliced
Wasserstein). KID's standard error comes from 8 disjoint chunks of the samples:
se = std(chunk KIDs) / sqrt(8); since every run starts from the same noise, a run is compared
with the reference by the paired standard error of the chunk-wise KID differences. Costs: top-level equivalents per sample (counted
evaluations x FLOPs / top FLOPs) and single-thread CPU wall-clock seconds per sample.
"""

from __future__ import annotations

import math
import platform
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..images.data import load_digits
from ..images.metrics import image_metrics, kid_unbiased, load_digit_classifier
from ..images.pipeline import MultilevelPipeline
from .common import single_thread, write_json

__all__ = ["run_images_bench"]


CHUNKS = 8


def _sd(vals: Sequence[float]) -> float:
    m = sum(vals) / len(vals)
    return math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def _chunk_kids(clf, x, ref_feats, chunks: int = CHUNKS) -> List[float]:
    """KID of each of ``chunks`` disjoint, equal parts of the samples against the reference."""
    with torch.no_grad():
        f = clf.features(x.clamp(-1, 1))
    if f.shape[0] < 2 * chunks:
        raise ValueError(f"n: expected at least {2 * chunks} samples ({chunks} chunks of 2 or more), got {f.shape[0]}")
    return [kid_unbiased(p, ref_feats) for p in torch.tensor_split(f, chunks)]


def run_images_bench(
    ladder: str,
    *,
    n: int = 256,
    seed: int = 0,
    em_steps: Sequence[int] = (1000, 500, 250, 100, 50),
    ddim_steps: Sequence[int] = (100, 50, 25),
    dpm_steps: Sequence[int] = (50, 20, 10),
    mlem_budgets: Sequence = (250, 100, 50, 25, (250, 1000), (100, 1000), (50, 1000)),
    out: Optional[str] = "results/images.json",
    command: Optional[str] = None,
    echo: Callable[[str], None] = print,
) -> Dict:
    """Run every setting once on ``n`` samples; write and return the table (see the module docstring).

    ``mlem_budgets``: budgets in top-level equivalents per sample (levels, steps and rate scale
    planned by the stored calibration), or ``(budget, steps)`` pairs that fix the step count.
    """
    pipe = MultilevelPipeline.from_pretrained(ladder)
    clf = load_digit_classifier()
    ref = load_digits(pipe.ladder.sample_size).x
    with torch.no_grad():
        ref_feats = clf.features(ref)
    runs: List[Dict] = []
    settings = ([("em", dict(steps=s)) for s in em_steps] + [("ddim", dict(steps=s)) for s in ddim_steps]
                + [("dpmpp_2m", dict(steps=s)) for s in dpm_steps]
                + [("mlem", dict(budget=b[0], steps=b[1]) if isinstance(b, tuple) else dict(budget=b)) for b in mlem_budgets])
    with single_thread():
        for method, knob in settings:
            start = time.perf_counter()
            res = pipe(n, method=method, generator=torch.Generator().manual_seed(seed), **knob)
            wall = time.perf_counter() - start
            m = image_metrics(res.x, ref, clf, seed=seed)
            row = {
                "method": method,
                **knob,
                "steps_run": res.report["steps"],
                "top_equivalents": res.report["top_equivalents_per_sample"],
                "wall_seconds_per_sample": wall / n,
                "kid": m["kid"],
                "kid_chunks": _chunk_kids(clf, res.x, ref_feats),
                "sliced_wasserstein": m["sliced_wasserstein"],
                "evaluations_per_sample": [lv["evaluations_per_sample"] for lv in res.report["levels"]],
            }
            if "plan" in res.report:
                row["plan"] = res.report["plan"]
            row["kid_se"] = _sd(row["kid_chunks"]) / math.sqrt(len(row["kid_chunks"]))
            runs.append(row)
            echo(f"{method:>8} {str(knob):>18}: {row['top_equivalents']:8.1f} top-eq, {row['wall_seconds_per_sample'] * 1e3:8.2f} "
                 f"ms/sample, KID {row['kid']:8.2f} +- {row['kid_se']:.2f}, SW {row['sliced_wasserstein']:.4f}")
    summary = _summary(runs)
    for line in summary["lines"]:
        echo(line)
    cal = pipe.calibration
    result = {
        "command": command,
        "ladder": ladder,
        "widths": pipe.ladder.widths,
        "flops": pipe.ladder.costs,
        "gamma": None if cal is None else cal.gamma,
        "gamma_se": None if cal is None or cal.gamma_se is None or math.isnan(cal.gamma_se) else cal.gamma_se,
        "n": n,
        "seed": seed,
        "reference": f"all {len(ref)} digits (training data)",
        "kid": (f"unbiased MMD^2, cubic polynomial kernel, 64-d digit-classifier features; kid_se from {CHUNKS} "
                "disjoint chunks; every run starts from the same noise, so differences between runs are judged "
                "by the paired standard error of the chunk-wise differences (diff_se)"),
        "machine": f"{platform.processor() or platform.machine()}, 1 torch thread, shared CPU",
        "runs": runs,
        "summary": {k: v for k, v in summary.items() if k != "lines"},
        "summary_lines": summary["lines"],
    }
    if out:
        write_json(out, result)
    return result


def _summary(runs: List[Dict]) -> Dict:
    """Each method against EM with the most steps: its cheapest run whose KID exceeds the reference's by
    at most 2 paired standard errors (runs share their initial noise: se of the chunk-wise differences)."""
    em = [r for r in runs if r["method"] == "em"]
    if not em:
        return {"lines": []}
    ref = max(em, key=lambda r: r["steps"])
    lines = [f"reference: EM-top {ref['steps']} steps, KID {ref['kid']:.2f} +- {ref['kid_se']:.2f}, "
             f"{ref['top_equivalents']:.0f} top-eq, {ref['wall_seconds_per_sample'] * 1e3:.1f} ms/sample"]
    out: Dict = {"reference": {"method": "em", "steps": ref["steps"], "kid": ref["kid"], "kid_se": ref["kid_se"]}}
    for r in runs:
        r["kid_diff"] = r["kid"] - ref["kid"]
        r["kid_diff_se"] = _sd([a - b for a, b in zip(r["kid_chunks"], ref["kid_chunks"])]) / math.sqrt(
            len(ref["kid_chunks"])) if r is not ref else 0.0
    for method in ("mlem", "em", "ddim", "dpmpp_2m"):
        ok = [r for r in runs if r["method"] == method and r is not ref
              and r["kid_diff"] <= 2 * r["kid_diff_se"]]
        if not ok:
            lines.append(f"{method}: no run within 2 paired se of the reference KID")
            out[method] = None
            continue
        best = min(ok, key=lambda r: r["top_equivalents"])
        c_ratio = ref["top_equivalents"] / best["top_equivalents"]
        w_ratio = ref["wall_seconds_per_sample"] / best["wall_seconds_per_sample"]
        knob = {k: best[k] for k in ("steps", "budget") if k in best}
        knob["steps_run"] = best["steps_run"]
        out[method] = {**knob, "kid": best["kid"], "kid_diff": best["kid_diff"], "kid_diff_se": best["kid_diff_se"],
                       "top_equivalents": best["top_equivalents"],
                       "cost_ratio": c_ratio, "wall_ratio": w_ratio}
        lines.append(f"{method}: cheapest run within 2 paired se ({knob}): KID {best['kid']:.2f}, "
                     f"diff {best['kid_diff']:+.2f} +- {best['kid_diff_se']:.2f}, "
                     f"{best['top_equivalents']:.1f} top-eq ({c_ratio:.2f}x cheaper), wall {w_ratio:.2f}x faster")
    return {**out, "lines": lines}

"""KID with standard errors from disjoint chunks of the samples, and the summary built on them.

The chunk-wise estimate that the GPU and distillation benchmarks (:mod:`.gpu_images`, :mod:`.distill`)
use; ``mlem bench images`` has moved to bootstrap intervals (:mod:`.images`).
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch

from ..images.metrics import kid_unbiased

__all__ = ["CHUNKS", "chunk_kids", "chunk_summary", "sample_sd"]

CHUNKS = 8


def sample_sd(vals: Sequence[float]) -> float:
    """The sample standard deviation (n - 1 in the denominator)."""
    m = sum(vals) / len(vals)
    return math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def chunk_kids(clf, x, ref_feats, chunks: int = CHUNKS) -> List[float]:
    """KID of each of ``chunks`` disjoint, equal parts of the samples against the reference."""
    with torch.no_grad():
        f = clf.features(x.clamp(-1, 1))
    if f.shape[0] < 2 * chunks:
        raise ValueError(f"n: expected at least {2 * chunks} samples ({chunks} chunks of 2 or more), got {f.shape[0]}")
    return [kid_unbiased(p, ref_feats) for p in torch.tensor_split(f, chunks)]


def chunk_summary(runs: List[Dict]) -> Dict:
    """Each method against EM with the most steps: its cheapest run whose KID exceeds the reference's by
    at most 2 paired standard errors (runs share their initial noise: se of the chunk-wise differences)."""
    em = [r for r in runs if r["method"] == "em"]
    if not em:
        return {"lines": []}
    ref = max(em, key=lambda r: r["steps"])
    lines = [
        f"reference: EM-top {ref['steps']} steps, KID {ref['kid']:.2f} +- {ref['kid_se']:.2f}, "
        f"{ref['top_equivalents']:.0f} top-eq, {ref['wall_seconds_per_sample'] * 1e3:.1f} ms/sample"
    ]
    out: Dict = {"reference": {"method": "em", "steps": ref["steps"], "kid": ref["kid"], "kid_se": ref["kid_se"]}}
    for r in runs:
        r["kid_diff"] = r["kid"] - ref["kid"]
        r["kid_diff_se"] = (
            sample_sd([a - b for a, b in zip(r["kid_chunks"], ref["kid_chunks"])]) / math.sqrt(len(ref["kid_chunks"]))
            if r is not ref
            else 0.0
        )
    for method in ("mlem", "em", "ddim", "dpmpp_2m"):
        ok = [r for r in runs if r["method"] == method and r is not ref and r["kid_diff"] <= 2 * r["kid_diff_se"]]
        if not ok:
            lines.append(f"{method}: no run within 2 paired se of the reference KID")
            out[method] = None
            continue
        best = min(ok, key=lambda r: r["top_equivalents"])
        c_ratio = ref["top_equivalents"] / best["top_equivalents"]
        w_ratio = ref["wall_seconds_per_sample"] / best["wall_seconds_per_sample"]
        knob = {k: best[k] for k in ("steps", "budget") if k in best}
        knob["steps_run"] = best["steps_run"]
        out[method] = {
            **knob,
            "kid": best["kid"],
            "kid_diff": best["kid_diff"],
            "kid_diff_se": best["kid_diff_se"],
            "top_equivalents": best["top_equivalents"],
            "cost_ratio": c_ratio,
            "wall_ratio": w_ratio,
        }
        lines.append(
            f"{method}: cheapest run within 2 paired se ({knob}): KID {best['kid']:.2f}, "
            f"diff {best['kid_diff']:+.2f} +- {best['kid_diff_se']:.2f}, "
            f"{best['top_equivalents']:.1f} top-eq ({c_ratio:.2f}x cheaper), wall {w_ratio:.2f}x faster"
        )
    return {**out, "lines": lines}

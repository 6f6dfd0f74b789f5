"""The verdicts of the planners, worded for humans: does ML-EM help, and against what.

Pure wording: the numbers come from :mod:`.planning`.  Levels are numbered from 1 here (the plans
hold 0-based indices); costs are top-level equivalents per sample; errors are RMS, state units.
"""

from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["call_plan_message", "em_verdict", "sampler_verdict"]


def _kept(levels: Sequence[int]) -> str:
    return ", ".join(str(l + 1) for l in levels)


def _asked(target: Optional[float], budget: Optional[float]) -> str:
    return f"target {target:.4g}" if target is not None else f"budget {budget:.4g} top-level equivalents"


def em_verdict(
    levels: Sequence[int],
    mu: float,
    steps: int,
    error: float,
    top_equivalents: float,
    target: Optional[float],
    budget: Optional[float],
    em_steps: int,
    em_top_equivalents: float,
    speedup: float,
) -> str:
    """The message of a plan on the EM model: ML-EM's predicted error and cost against EM with the top level
    alone reaching the same error in ``em_steps`` steps (``speedup`` = EM's cost / ML-EM's)."""
    kept, what = _kept(levels), _asked(target, budget)
    em = f"EM with the top level needs {em_steps} steps ({em_top_equivalents:.4g} top-level equivalents)"
    if speedup > 1:
        return (
            f"ML-EM with levels {kept}, mu={mu:.4g}, steps={steps} is predicted to reach RMS error {error:.4g} "
            f"({what}) for {top_equivalents:.4g} top-level equivalents per sample; {em}: "
            f"predicted speedup {speedup:.3g}x"
        )
    return (
        f"ML-EM is not predicted to help here ({what}): its best plan (levels {kept}, mu={mu:.4g}, "
        f"steps={steps}) costs {top_equivalents:.4g} top-level equivalents per sample for RMS error "
        f"{error:.4g}; {em}: speedup {speedup:.3g}x <= 1, use EM"
    )


def sampler_verdict(
    sampler: str,
    levels: Sequence[int],
    mu: float,
    steps: int,
    error: float,
    top_equivalents: float,
    target: Optional[float],
    budget: Optional[float],
    same: dict,
    best: Optional[dict],
    at_budget: dict,
    speedup: float,
) -> str:
    """The message of a plan inside a measured ``sampler``: against the top level alone in the same sampler at
    the same cost (``same``), the cheapest single-model run reaching the same error (``best``, None if none
    does) and the most accurate one at the same cost (``at_budget``); runs are ``{"sampler", "steps",
    "top_equivalents", "error"}`` dicts."""
    head = (
        f"ML-EM inside {sampler} (levels {_kept(levels)}, mu={mu:.4g}, steps={steps}; "
        f"{_asked(target, budget)}) is predicted to reach error {error:.4g} for {top_equivalents:.4g} "
        f"top-level equivalents per sample; the top level alone with {sampler} at that cost "
        f"({same['steps']} steps): error {same['error']:.4g}"
    )
    if best is None:
        return f"{head}; no measured single-model sampler reaches {error:.4g}: predicted to help"
    if speedup > 1:
        return (
            f"{head}; the cheapest single-model run reaching {error:.4g} is {best['sampler']} with "
            f"{best['steps']} steps: predicted speedup {speedup:.3g}x"
        )
    same_run = (at_budget["sampler"], at_budget["steps"]) == (best["sampler"], best["steps"])
    at_cost = (
        ""
        if same_run
        else (
            f", or {at_budget['sampler']} with {at_budget['steps']} steps for "
            f"error {at_budget['error']:.4g} at the same cost"
        )
    )
    return (
        f"ML-EM is not predicted to help here. {head}; run the top level alone with "
        f"{best['sampler']}, {best['steps']} steps ({best['top_equivalents']:.4g} top-level "
        f"equivalents) for the same error{at_cost} (speedup {speedup:.3g}x <= 1)"
    )


def call_plan_message(
    levels: Sequence[int], mu: float, budget: float, calls: int, top_equivalents: float, all_ones: bool
) -> str:
    """The message of a plan for a fixed grid of ``calls`` model calls (``all_ones``: every p is 1).

    A plan that costs at least the top model alone at every call (``top_equivalents >= calls``) says that
    nothing is saved, and by how much it costs more: with every p = 1 every level runs at every call."""
    te = top_equivalents
    if te >= calls * (1 - 1e-12):
        more = f", {100 * (te / calls - 1):.0f}% more than" if te > calls * (1 + 1e-9) else ", as much as"
        if all_ones:
            what = (
                f"budget {budget:.4g} pays every level at every one of the {calls} calls: every probability is 1, "
                "so every level runs at every call and the output is the top model's"
            )
        else:
            what = f"budget {budget:.4g}, mu={mu:.4g}: the output stays unbiased for the top model's"
        return (
            f"{what}, at a predicted {te:.4g} top-level equivalents per sample{more} the top model alone "
            f"({calls}); nothing is saved: use the top model alone, or a budget below {calls}"
        )
    return (
        f"levels {_kept(levels)}, mu={mu:.4g}: predicted {te:.4g} top-level equivalents per sample "
        f"for {calls} calls (the top model at every call: {calls}); the estimate stays unbiased for the top model "
        "at each call, at an added variance this plan minimises for its cost. Whether it beats the top model "
        "with fewer steps at the same cost is not predicted here: compare both"
    )

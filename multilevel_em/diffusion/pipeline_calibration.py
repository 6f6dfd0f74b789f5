"""Calibration of a :class:`~multilevel_em.diffusion.MultilevelModel` on the user's own pipeline runs.

``run(num_inference_steps)`` runs the user's pipeline once from the same initial noise (the user seeds a
generator inside) and returns its output. :func:`calibrate_pipeline` runs it with the top model alone at
several call counts and at a reference count, once with every level at every call (the level differences
delta_l(t), :meth:`MultilevelModel.calibrate`'s recording), with random-sign perturbations of the model output
on blocks of calls (the output's sensitivity), and with deterministic switches to each cheaper level; the
planning side is :mod:`multilevel_em.calibration.schedules`.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
import torch

from ..calibration.schedules import PipelineMeasurements, SchedulePlan
from .metrics import bootstrap_counts, frechet_bootstrap, frechet_distance, percentile_ci

__all__ = ["calibrate_pipeline", "takes_steps", "output_array", "output_features", "score_distribution"]


def takes_steps(run: Callable) -> bool:
    """Whether ``run`` takes the number of inference steps (one required positional parameter)."""
    try:
        params = list(inspect.signature(run).parameters.values())
    except (TypeError, ValueError):
        return False
    required = [
        p
        for p in params
        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(required) == 1


def output_array(out: Any) -> np.ndarray:
    """What ``run`` returned as a float64 array: a tensor, an array, or a pipeline output with ``.images``
    (``output_type="np"``) or ``.latents``; a NaN or Inf is an error."""
    for name in ("images", "latents", "sample"):
        if not isinstance(out, (torch.Tensor, np.ndarray)) and hasattr(out, name):
            out = getattr(out, name)
            break
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], (torch.Tensor, np.ndarray)):
        out = out[0]
    if isinstance(out, torch.Tensor):
        arr = out.detach().to("cpu", torch.float64).numpy()
    elif isinstance(out, np.ndarray) and np.issubdtype(out.dtype, np.number):
        arr = out.astype(np.float64)
    else:
        raise TypeError(
            "run: expected it to return the pipeline's output as a tensor, an array, or an output with .images "
            f"(output_type='np'), got {type(out).__name__}"
        )
    if not np.all(np.isfinite(arr)):
        raise FloatingPointError("run: the pipeline's output contains NaN or Inf")
    return arr


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        raise ValueError(f"run: outputs of different shapes across runs ({a.shape} and {b.shape})")
    return float(np.sqrt(np.mean((a - b) ** 2)))


def calibrate_pipeline(
    model,
    run: Callable[[int], Any],
    *,
    steps: Sequence[int],
    reference_steps: Optional[int],
    blocks: int,
    fractions: Sequence[float],
    perturbation: float,
    seed: int,
):
    """Measure the ladder and the pipeline (module docstring); returns ``(calibration, measurements, reference)``,
    the last the reference run's output (the top model alone with ``reference_steps`` steps)."""
    try:
        given = list(steps)
    except TypeError:
        raise TypeError(f"steps: expected a sequence of step counts, got {steps!r}") from None
    if not given or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in given):
        raise ValueError(f"steps: expected integer step counts >= 1, got {given!r}")
    steps = sorted({int(s) for s in given})
    ref = 2 * steps[-1] if reference_steps is None else int(reference_steps)
    if ref <= steps[-1]:
        raise ValueError(f"reference_steps: expected more than the largest of steps ({steps[-1]}), got {ref}")
    if not (isinstance(blocks, int) and 1 <= blocks <= steps[-1]):
        raise ValueError(
            f"blocks: expected an integer in [1, {steps[-1]}] (the calls of the largest count), got {blocks}"
        )
    try:
        fractions = [float(f) for f in fractions]
        perturbation = float(perturbation)
    except (TypeError, ValueError):
        raise ValueError(
            f"fractions, perturbation: expected numbers, got fractions={fractions!r}, perturbation={perturbation!r}"
        ) from None
    if any(not 0.0 < f < 1.0 for f in fractions):
        raise ValueError(f"fractions: expected fractions in (0, 1), got {fractions}")
    if not (math.isfinite(perturbation) and perturbation > 0):
        raise ValueError(f"perturbation: expected a size > 0 (in units of the ladder's difference), got {perturbation}")
    K = len(model.models)
    N = steps[-1]
    runs = 0

    def call_run(n: int, hook) -> np.ndarray:
        nonlocal runs
        before = model.calls
        model._forward_hook = hook
        try:
            out = output_array(run(n))
        finally:
            model._forward_hook = None
        runs += 1
        made = model.calls - before
        if made != n:
            raise ValueError(
                f"run: {n} inference steps made {made} model calls; the calibration needs one call per step "
                f"(a scheduler that calls the model {made} times for {n} steps cannot run a schedule)"
            )
        return out

    groups = []

    def top_alone(evaluator, call, tau):
        groups.append(call.groups)
        return evaluator(K - 1, call.state, tau)

    outs = {n: call_run(n, top_alone) for n in steps[:-1]}
    reference = call_run(ref, top_alone)
    # every level at every call at N calls (the level differences), returning the top model's output
    recorded: List[np.ndarray] = []
    before = model.calls
    cal = model.calibrate(lambda: recorded.append(output_array(run(N))))
    runs += 1
    if model.calls - before != N:
        raise ValueError(f"run: {N} inference steps made {model.calls - before} model calls; expected {N}")
    outs[N] = recorded[0]
    step_errors = [_rms(outs[n], reference) for n in steps]
    slope = None
    if len(steps) > 1 and all(e > 0 for e in step_errors):  # the fitted order of e(N) ~ N^slope
        slope = float(np.polyfit(np.log(steps), np.log(step_errors), 1)[0])
    if slope is not None and slope > -0.1:
        warnings.warn(
            f"steps: the top model's error against {ref} calls does not fall with more calls ({step_errors[0]:.4g} at "
            f"{steps[0]} calls, {step_errors[-1]:.4g} at {N}; fitted order {slope:.2f}): the pipeline's output does not converge from the same "
            "noise (a scheduler that draws fresh noise at every step, such as DDPM or Euler ancestral?), so the "
            "pathwise predictions of plan() mean little; calibrate(run, features=f) and plan(budget, "
            "criterion='distribution') score schedules by their output distribution instead",
            RuntimeWarning,
            stacklevel=3,
        )
    # sensitivity: random-sign perturbations of the model output on blocks of calls
    sizes = [(N // blocks) + (1 if b < N % blocks else 0) for b in range(blocks)]
    bounds = np.cumsum([0] + sizes)
    gen = torch.Generator().manual_seed(int(seed))
    per_block = []
    for b in range(blocks):
        lo, hi = int(bounds[b]), int(bounds[b + 1])
        record = []  # (t, span, sigma) of the perturbed calls

        def perturbed(evaluator, call, tau, lo=lo, hi=hi, record=record):
            out = evaluator(K - 1, call.state, tau)
            n = model.call_index(tau)
            if lo <= n < hi:
                # along the ladder's own difference f^K - f^1 (shaped like the corrections ML-EM adds, which a
                # later call propagates as it would that error; white noise would be partly denoised away),
                # times a random sign per image and call, shared by an image's guidance copies as its draws are
                diff = out - evaluator(0, call.state, tau)
                shape = (out.shape[0],) + (1,) * (out.ndim - 1)
                signs = torch.randint(0, 2, shape, generator=gen).to(out) * 2 - 1
                sigma = perturbation * float(diff.double().pow(2).mean().sqrt())
                t, span = model.time_and_span(tau)
                record.append((t, span, sigma))
                return out + perturbation * signs * diff
            return out

        d = _rms(call_run(N, perturbed), outs[N])
        denom = sum((span * sigma) ** 2 for _, span, sigma in record)
        ts = [t for t, _, _ in record]
        per_block.append((min(ts), max(ts), math.sqrt(d**2 / denom) if denom > 0 else 0.0))
    per_block.sort()
    edges = [0.0] + [(per_block[i][1] + per_block[i + 1][0]) / 2 for i in range(blocks - 1)] + [1.0 + 1e-9]
    edges[0] = min(0.0, per_block[0][0])
    edges[-1] = max(edges[-1], per_block[-1][1] + 1e-9)
    # deterministic switches: each cheaper level for the first fraction of the calls, at every measured count
    switches = []
    for level in range(K - 1):
        for f in fractions:
            errors = []
            for n in steps:
                first = int(round(f * n))
                if first < 1:
                    errors.append(None)
                    continue

                def switched(evaluator, call, tau, level=level, first=first):
                    j = level if model.call_index(tau) < first else K - 1
                    return evaluator(j, call.state, tau)

                errors.append(_rms(call_run(n, switched), reference))
            switches.append((level, f, tuple(errors)))
    # the level differences are L2 norms over an image's rows (its guidance copies) and output elements
    elements = max(groups) * int(np.prod(model._out_shape))
    meas = PipelineMeasurements(
        steps=tuple(steps),
        step_errors=tuple(step_errors),
        reference_steps=ref,
        sensitivity_edges=tuple(edges),
        sensitivity=tuple(s for _, _, s in per_block),
        switches=tuple(switches),
        elements=elements,
        runs=runs,
        scheduler=type(model.scheduler).__name__,
        num_levels=K,
    )
    model.reset()
    return cal, meas, reference


def output_features(features: Callable, out: np.ndarray, n: Optional[int] = None) -> torch.Tensor:
    """``features(out)`` as a float64 tensor (n, d), checked: one finite row per image."""
    f = features(out)
    if isinstance(f, np.ndarray):
        f = torch.from_numpy(np.asarray(f, dtype=np.float64))
    if not isinstance(f, torch.Tensor) or f.ndim != 2:
        got = tuple(f.shape) if isinstance(f, (torch.Tensor, np.ndarray)) else type(f).__name__
        raise ValueError(f"features: expected it to return an (images, d) array or tensor, got {got}")
    f = f.detach().to("cpu", torch.float64)
    if n is not None and f.shape[0] != n:
        raise ValueError(f"features: expected one row per image ({n}), got {f.shape[0]}")
    if f.shape[0] < 2:
        raise ValueError(f"features: the Frechet distance needs at least 2 images, got {f.shape[0]}")
    if not bool(torch.isfinite(f).all()):
        raise FloatingPointError("features: NaN or Inf in the features")
    return f


def score_distribution(
    model,
    run: Callable[[int], Any],
    features: Callable,
    reference: torch.Tensor,
    plan: SchedulePlan,
    *,
    boot: int,
    seed: int,
) -> SchedulePlan:
    """Run every candidate of ``plan`` and its switches once (the model's level draws seeded by ``seed``), score
    each by the Frechet distance of its output features to ``reference`` (the reference run's features) with
    a bootstrap interval (``boot`` resamples of the images, the same for every candidate, so the differences
    to the top model alone are paired), and pick the lowest distance."""
    from dataclasses import replace

    pool = list(plan.candidates) + [c for c in plan.switches if c not in plan.candidates]
    n = reference.shape[0]
    counts = bootstrap_counts(n, boot, seed)
    scored, reps = [], {}
    saved = model.schedule, model.generator
    try:
        for c in pool:
            model.set_schedule(c.schedule)
            model.generator = torch.Generator().manual_seed(int(seed))
            f = output_features(features, output_array(run(c.num_inference_steps)), n)
            fd = frechet_distance(f, reference)
            r = frechet_bootstrap(f, reference, counts)
            reps[c.name] = (fd, r)
            scored.append(replace(c, fd=fd, fd_ci=percentile_ci(r, center=fd)))
    finally:
        model.schedule, model.generator = saved
    top = next((c for c in scored if c.kind == "top"), None)
    if top is not None:
        fd_top, r_top = reps[top.name]
        scored = [
            replace(
                c,
                fd_minus_top=c.fd - fd_top,
                fd_minus_top_ci=percentile_ci(reps[c.name][1] - r_top, center=c.fd - fd_top),
            )
            for c in scored
        ]
    choice = min(scored, key=lambda c: (c.fd, c.predicted_cost))
    if top is None:
        tail = "the top model alone has no measured error at this budget."
    elif choice.name == top.name:
        tail = "no other schedule measured a lower distance at this cost."
    else:
        lo, hi = choice.fd_minus_top_ci
        tail = (
            f"the top model alone with {top.num_inference_steps} steps: {top.fd:.4g}; difference "
            f"{choice.fd_minus_top:+.4g} [{lo:+.4g}, {hi:+.4g}] ({'resolved' if hi < 0 else 'within the noise'})."
        )
    lo, hi = choice.fd_ci
    message = (
        f"Picked {choice.name} by Frechet distance to the reference run's features: {choice.fd:.4g} "
        f"[{lo:.4g}, {hi:.4g}] on {n} images, for {choice.predicted_cost:.3g} top-level equivalents per image; {tail}"
    )
    return replace(
        plan,
        candidates=tuple(c for c in scored if c.name in {p.name for p in plan.candidates}),
        switches=tuple(c for c in scored if c.name in {p.name for p in plan.switches}),
        choice=choice,
        message=message,
        pipeline_kwargs={"num_inference_steps": choice.num_inference_steps},
        criterion="distribution",
    )

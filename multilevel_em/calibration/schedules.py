"""Planning schedules of models for a user's pipeline from measurements along its own trajectories.

What :meth:`multilevel_em.diffusion.MultilevelModel.calibrate` measures when ``run(num_inference_steps)``
runs the user's pipeline from fixed noise (:class:`PipelineMeasurements`), and how :func:`plan_schedules`
turns it into candidates with predicted cost and error at a budget.

Error is the pathwise RMS (over images and elements) of the pipeline's output against the top model's
output with ``reference_steps`` calls from the same noise. Predicted error of a candidate at N calls:

- the top model alone: e(N), the measured step-error curve (log-log interpolation between the measured
  call counts; no extrapolation beyond them);
- a deterministic switch (level j for the first fraction f of the calls): its own error, measured by running it
  at each of the measured call counts and interpolated the same way;
- ML-EM with the closed-form rates sized to the budget (:func:`~multilevel_em.calibration.planning.plan_calls`):
  sqrt(e(N)^2 + V), V = sum_n g_n^2 sum_l (1 / p_{n,l} - 1) delta_l(t_n)^2 the variance the draws add,
  propagated to the output by the measured sensitivity g_n = s(t_n) span_n of the output to a perturbation of
  the model output at call n (perturbations along the ladder's difference f^K - f^1 with a random sign per image
  and call, on blocks of calls; delta_l per element);
- a hybrid (a cheaper level alone for the first calls, as a measured switch, then ML-EM with closed-form rates
  sized to the rest of the budget): sqrt(e_switch(N)^2 + V_tail), V summed over the ML-EM calls only.

No fitted fudge factor enters; each term is measured on the user's pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..engine.call_schedule import CallSchedule
from .model import Calibration
from .planning import plan_calls  # the one planner of closed-form rates for a fixed call grid

__all__ = ["PipelineMeasurements", "ScheduleCandidate", "SchedulePlan", "plan_schedules", "step_error"]

_FIELDS = (
    "steps",
    "step_errors",
    "reference_steps",
    "sensitivity_edges",
    "sensitivity",
    "switches",
    "elements",
    "runs",
    "scheduler",
    "num_levels",
)


def _positive_ints(name: str, values) -> Tuple[int, ...]:
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a sequence of integers, got {values!r}") from None
    if any(v < 1 for v in out) or any(float(v) != float(w) for v, w in zip(out, values)):
        raise ValueError(f"{name}: expected integers >= 1, got {values!r}")
    return out


def _finite(name: str, values, positive: bool = False) -> Tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a sequence of numbers, got {values!r}") from None
    if not all(math.isfinite(v) and (v > 0 if positive else v >= 0) for v in out):
        raise ValueError(f"{name}: expected finite numbers {'> 0' if positive else '>= 0'}, got {list(out)}")
    return out


@dataclass(frozen=True)
class PipelineMeasurements:
    """What a pipeline calibration measured (module docstring), validated completely when built.

    Attributes:
        steps: the call counts of the top model alone that were run, increasing (each < ``reference_steps``).
        step_errors: RMS error of each against the reference (output units, per element), same length.
        reference_steps: the call count of the reference run (the top model alone).
        sensitivity_edges: time edges of the blocks of calls perturbed (increasing, in t = (timestep + 1) / T).
        sensitivity: s per block (output RMS per unit of model-output RMS per unit of span), one per block.
        switches: ``(level, fraction, errors)`` per switch: 0-based level, fraction of the first calls on it (the
            first round(fraction N) of N calls), and its RMS error against the reference at each of ``steps``
            (None where that count switched no call).
        elements: elements per image of the model output, guidance copies included (the level differences are
            L2 norms over them).
        runs: pipeline runs the calibration took.
        scheduler: the class name of the pipeline's scheduler when measured.
        num_levels: the ladder's number of levels when measured.
    """

    steps: Tuple[int, ...]
    step_errors: Tuple[float, ...]
    reference_steps: int
    sensitivity_edges: Tuple[float, ...]
    sensitivity: Tuple[float, ...]
    switches: Tuple[Tuple[int, float, Tuple[Optional[float], ...]], ...] = field(default=())
    elements: int = 1
    runs: int = 0
    scheduler: str = ""
    num_levels: int = 0

    def __post_init__(self):
        steps = _positive_ints("steps", self.steps)
        errors = _finite("step_errors", self.step_errors)
        if not steps or len(errors) != len(steps):
            raise ValueError(f"step_errors: expected one error per call count ({len(steps)}), got {len(errors)}")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"steps: expected increasing call counts, got {list(steps)}")
        (ref,) = _positive_ints("reference_steps", [self.reference_steps])
        if steps[-1] >= ref:
            raise ValueError(f"reference_steps: expected more calls than every measured count ({steps[-1]}), got {ref}")
        edges = _finite("sensitivity_edges", self.sensitivity_edges)
        sens = _finite("sensitivity", self.sensitivity)
        if len(edges) != len(sens) + 1 or not sens or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(
                f"sensitivity_edges: expected {len(sens) + 1} increasing edges for {len(sens)} blocks, got {list(edges)}"
            )
        switches = []
        for i, s in enumerate(self.switches):
            try:
                level, frac, errs = s
                level, frac = int(level), float(frac)
                errs = tuple(None if e is None else float(e) for e in errs)
            except (TypeError, ValueError):
                raise ValueError(
                    f"switches[{i}]: expected (level, fraction, errors per call count), got {s!r}"
                ) from None
            if level < 0 or not 0.0 < frac < 1.0:
                raise ValueError(f"switches[{i}]: expected level >= 0 and a fraction in (0, 1), got {s!r}")
            if len(errs) != len(steps) or any(e is not None and not (math.isfinite(e) and e >= 0) for e in errs):
                raise ValueError(
                    f"switches[{i}]: expected {len(steps)} errors >= 0 (or null), one per call count, got {list(errs)}"
                )
            switches.append((level, frac, errs))
        (elements,) = _positive_ints("elements", [self.elements])
        runs = int(self.runs)
        if runs < 0:
            raise ValueError(f"runs: expected >= 0, got {self.runs}")
        if not isinstance(self.scheduler, str):
            raise ValueError(f"scheduler: expected a class name, got {self.scheduler!r}")
        (num_levels,) = _positive_ints("num_levels", [self.num_levels]) if self.num_levels else (0,)
        if any(level >= num_levels - 1 for level, _, _ in switches) and num_levels:
            raise ValueError(f"switches: a switched level must be below the top of the {num_levels} levels")
        for name, value in (
            ("steps", steps),
            ("step_errors", errors),
            ("reference_steps", ref),
            ("sensitivity_edges", edges),
            ("sensitivity", sens),
            ("switches", tuple(switches)),
            ("elements", elements),
            ("runs", runs),
            ("num_levels", num_levels),
        ):
            object.__setattr__(self, name, value)

    def sensitivity_at(self, t) -> np.ndarray:
        """s(t), piecewise constant over the measured blocks (the end blocks extend beyond the edges)."""
        t = np.asarray(t, dtype=np.float64)
        i = np.clip(
            np.searchsorted(np.asarray(self.sensitivity_edges), t, side="right") - 1, 0, len(self.sensitivity) - 1
        )
        return np.asarray(self.sensitivity)[i]

    def to_dict(self) -> Dict:
        return {
            "steps": list(self.steps),
            "step_errors": list(self.step_errors),
            "reference_steps": self.reference_steps,
            "sensitivity_edges": list(self.sensitivity_edges),
            "sensitivity": list(self.sensitivity),
            "switches": [[lv, f, list(e)] for lv, f, e in self.switches],
            "elements": self.elements,
            "runs": self.runs,
            "scheduler": self.scheduler,
            "num_levels": self.num_levels,
        }

    @classmethod
    def from_dict(cls, d: Dict) -> "PipelineMeasurements":
        if not isinstance(d, dict):
            raise TypeError(f"pipeline measurements: expected a JSON object, got {type(d).__name__}")
        missing = [k for k in _FIELDS if k not in d]
        unknown = sorted(set(d) - set(_FIELDS))
        if missing or unknown:
            raise ValueError(
                "pipeline measurements: "
                + "; ".join(
                    s
                    for s in (
                        f"missing field(s) {', '.join(missing)}" if missing else "",
                        f"unknown field(s) {', '.join(unknown)}" if unknown else "",
                    )
                    if s
                )
            )
        return cls(**{k: d[k] for k in _FIELDS})


def _interpolate(steps: Sequence[int], errors: Sequence[Optional[float]], calls: int) -> Optional[float]:
    """Log-log interpolation of measured errors over call counts (entries None are skipped); None outside the
    measured counts (no extrapolation)."""
    pts = [(n, e) for n, e in zip(steps, errors) if e is not None]
    if not pts or not pts[0][0] <= calls <= pts[-1][0]:
        return None
    n, e = (np.asarray(v, dtype=np.float64) for v in zip(*pts))
    if np.any(e <= 0):
        return float(np.interp(calls, n, e))
    return float(np.exp(np.interp(np.log(calls), np.log(n), np.log(e))))


def step_error(meas: PipelineMeasurements, calls: int) -> Optional[float]:
    """e(calls): the top model alone's measured error, log-log interpolated between measured call counts; None
    outside them (no extrapolation)."""
    return _interpolate(meas.steps, meas.step_errors, calls)


@dataclass(frozen=True)
class ScheduleCandidate:
    """One schedule a plan compared: ``name``, ``predicted_error`` (RMS per element against the reference),
    ``predicted_cost`` (top-level equivalents per image), ``num_inference_steps`` and the ``schedule``.

    With the distributional criterion also: ``fd`` (Frechet distance of its output features to the
    reference outputs' on the calibration batch, measured by running it), ``fd_ci`` (bootstrap interval),
    ``fd_minus_top`` and ``fd_minus_top_ci`` (paired difference to the top model alone at floor(budget) steps).
    ``kind`` says which family it is: ``"top"`` (the top model alone), ``"switch"`` (a cheaper level for the
    first calls, the top model after), ``"mlem"`` (ML-EM at every call) or ``"hybrid"`` (a cheaper level for
    the first calls, ML-EM after)."""

    name: str
    predicted_error: float
    predicted_cost: float
    num_inference_steps: int
    schedule: CallSchedule = field(repr=False)
    fd: Optional[float] = None
    fd_ci: Optional[Tuple[float, float]] = None
    fd_minus_top: Optional[float] = None
    fd_minus_top_ci: Optional[Tuple[float, float]] = None
    kind: str = "schedule"


@dataclass(frozen=True)
class SchedulePlan:
    """What :func:`plan_schedules` compared and picked: ``candidates`` (best of each kind by predicted error),
    ``choice``, ``budget``, ``message`` (what it picked and what the top model alone would give),
    ``pipeline_kwargs`` (pass them to the pipeline call: ``num_inference_steps``), ``criterion``
    (``"pathwise"`` or ``"distribution"``) and ``switches`` (every switch that fits the budget, the
    distributional criterion's extra candidates)."""

    candidates: Tuple[ScheduleCandidate, ...]
    choice: ScheduleCandidate
    budget: float
    message: str
    pipeline_kwargs: Dict = field(default_factory=dict)
    criterion: str = "pathwise"
    switches: Tuple[ScheduleCandidate, ...] = ()


Grid = Callable[[int], Tuple[Sequence[float], Sequence[float]]]


def _mlem_calls(cal: Calibration, meas, budget: float, times: np.ndarray, spans: np.ndarray):
    """Closed-form ML-EM rates sized to ``budget`` over the given calls, and the variance they add at the output.

    Returns ``(levels, p, V)``: the sub-ladder, p of shape (calls, corrections), and
    V = sum_n g_n^2 sum_l (1 / p_{n,l} - 1) delta_l(t_n)^2 (RMS per element, squared); None where the budget
    does not cover the base level at every call."""
    try:
        plan = plan_calls(cal, budget, times, spans)
    except ValueError:  # the budget does not cover the base level at every call
        return None
    lv = plan.levels
    delta, _ = cal.corrections(lv)
    d = np.stack([np.interp(times, cal.times, delta[:, k]) for k in range(delta.shape[1])], 1)
    d = d / math.sqrt(meas.elements)  # per-row L2 norm -> RMS per element
    p = np.asarray(plan.probabilities, dtype=np.float64).reshape(len(times), -1)
    # a correction that never fires (p = 0) adds no variance when its levels agree there, and a bias otherwise
    safe = np.maximum(p, 1e-300)
    var_calls = np.where(p > 0, (1.0 / safe - 1.0) * d**2, np.where(d > 0, np.inf, 0.0)).sum(1)
    g = meas.sensitivity_at(times) * spans
    return lv, p, float((g**2 * var_calls).sum())


def _mlem_candidate(cal: Calibration, meas, budget: float, calls: int, grid: Grid) -> Optional[ScheduleCandidate]:
    e = step_error(meas, calls)
    if e is None:
        return None
    times, spans = (np.asarray(a, dtype=np.float64) for a in grid(calls))
    out = _mlem_calls(cal, meas, budget, times, spans)
    if out is None:
        return None
    lv, p, V = out
    sched = CallSchedule.mlem([tuple(row) for row in p], cal.n_levels, levels=lv)
    return ScheduleCandidate(
        f"ML-EM, {calls} calls (levels {', '.join(str(l + 1) for l in lv)})",
        math.sqrt(e**2 + V),
        sched.expected_cost(cal.costs),
        calls,
        sched,
        kind="mlem",
    )


def _hybrid_candidate(
    cal: Calibration, meas, budget: float, calls: int, grid: Grid, level: int, fraction: float, errors
) -> Optional[ScheduleCandidate]:
    """Level ``level`` alone for the first round(fraction * calls) calls (a measured switch), then ML-EM with
    closed-form rates sized to the rest of the budget. Predicted error: sqrt(e_switch^2 + V_tail), the switch's
    measured error (its bias and the discretization) and the variance the tail's draws add."""
    e = _interpolate(meas.steps, errors, calls)
    first = int(round(fraction * calls))
    if e is None or not 0 < first < calls:
        return None
    costs = np.asarray(cal.costs, dtype=np.float64)
    tail_budget = budget - first * costs[level] / costs[-1]
    if tail_budget <= 0:
        return None
    times, spans = (np.asarray(a, dtype=np.float64) for a in grid(calls))
    out = _mlem_calls(cal, meas, tail_budget, times[first:], spans[first:])
    if out is None:
        return None
    lv, p, V = out
    if np.all(p >= 1.0):  # every correction fires: this is the plain switch, already a candidate
        return None
    K = cal.n_levels
    sched = CallSchedule(
        ((level,),) * first + (tuple(lv),) * (calls - first),
        ((),) * first + tuple(tuple(row) for row in p),
        K,
        "hybrid",
    )
    return ScheduleCandidate(
        f"level {level + 1} for the first {first} of {calls} calls, then ML-EM (levels "
        f"{', '.join(str(l + 1) for l in lv)})",
        math.sqrt(e**2 + V),
        sched.expected_cost(costs),
        calls,
        sched,
        kind="hybrid",
    )


def plan_schedules(
    cal: Calibration, meas: PipelineMeasurements, budget: float, grid: Grid, *, max_calls: Optional[int] = None
) -> SchedulePlan:
    """Candidates at equal expected cost (at most ``budget`` top-level equivalents per image) and the pick.

    Args:
        cal: the level differences delta_l(t) along the pipeline's trajectories and the levels' costs.
        meas: the pipeline measurements (step-error curve, sensitivity, switch errors).
        budget: top-level equivalents per image; at least one call of the cheapest level.
        grid: ``grid(N) -> (times, spans)`` of the pipeline's scheduler with N calls (one call per timestep).
        max_calls: the most calls ML-EM may use (default: the largest measured call count).

    Returns:
        A :class:`SchedulePlan`: the top model alone at floor(budget) calls, the best deterministic switch,
        the best ML-EM over call counts and the best hybrid (switch first, ML-EM after), each the lowest
        predicted error of its kind, and the lowest of all.
    """
    try:
        budget = float(budget)
    except (TypeError, ValueError):
        raise TypeError(f"budget: expected a number of top-level equivalents per image, got {budget!r}") from None
    costs = np.asarray(cal.costs, dtype=np.float64)
    K = len(costs)
    cheapest = costs[0] / costs[-1]
    if not (math.isfinite(budget) and budget >= cheapest * (1 - 1e-12)):
        raise ValueError(
            f"budget: {budget:g} top-level equivalents per image is below one call of the cheapest schedule "
            f"(one call of level 1, {cheapest:.3g})"
        )
    if meas.num_levels and meas.num_levels != K:
        raise ValueError(f"calibration: measured on a ladder of {meas.num_levels} levels, this one has {K}")
    kinds: Dict[str, List[ScheduleCandidate]] = {"top": [], "switch": [], "mlem": [], "hybrid": []}
    n_top = int(math.floor(budget + 1e-9))
    if n_top >= 1:
        e = step_error(meas, n_top)
        if e is not None:
            kinds["top"].append(
                ScheduleCandidate(
                    f"top model alone, {n_top} calls",
                    e,
                    float(n_top),
                    n_top,
                    CallSchedule.top_alone(n_top, K),
                    kind="top",
                )
            )
    for level, frac, errors in meas.switches:
        if level >= K - 1:
            continue
        # the most calls whose switch fits the budget
        for n in range(int(meas.steps[-1]), 0, -1):
            s = CallSchedule.switch(n, K, level, frac)
            if s.expected_cost(costs) <= budget * (1 + 1e-12):
                e = _interpolate(meas.steps, errors, n)
                if e is not None and s.biased_calls:
                    kinds["switch"].append(
                        ScheduleCandidate(
                            f"level {level + 1} for the first {len(s.biased_calls)} of {n} calls, then the top model",
                            e,
                            s.expected_cost(costs),
                            n,
                            s,
                            kind="switch",
                        )
                    )
                break
    top_calls = int(max_calls) if max_calls is not None else int(meas.steps[-1])
    for n in range(max(n_top + 1, 1), top_calls + 1):
        c = _mlem_candidate(cal, meas, budget, n, grid)
        if c is not None:
            kinds["mlem"].append(c)
    for level, frac, errors in meas.switches:
        if level >= K - 1:
            continue
        for n in range(1, top_calls + 1):
            c = _hybrid_candidate(cal, meas, budget, n, grid, level, frac, errors)
            if c is not None:
                kinds["hybrid"].append(c)
    candidates = tuple(min(v, key=lambda c: c.predicted_error) for v in kinds.values() if v)
    if not candidates:
        raise ValueError(
            f"budget: no schedule at {budget:g} top-level equivalents per image falls within the measured call "
            f"counts ({meas.steps[0]}..{meas.steps[-1]}); calibrate with steps= that cover it"
        )
    choice = min(candidates, key=lambda c: (c.predicted_error, c.predicted_cost))
    top = next((c for c in candidates if c.kind == "top"), None)
    if top is None:
        tail = "the top model alone has no measured error at this budget."
    elif top is choice:
        tail = "no other schedule is predicted to do better at this cost."
    else:
        tail = (
            f"the top model alone with {top.num_inference_steps} calls is predicted to reach {top.predicted_error:.4g} "
            f"({top.predicted_error / max(choice.predicted_error, 1e-300):.2f}x the error)."
        )
    message = (
        f"Picked {choice.name}: predicted error {choice.predicted_error:.4g} (RMS against the top model with "
        f"{meas.reference_steps} calls) for {choice.predicted_cost:.3g} top-level equivalents per image; {tail}"
    )
    return SchedulePlan(
        candidates,
        choice,
        budget,
        message,
        {"num_inference_steps": choice.num_inference_steps},
        switches=tuple(kinds["switch"]),
    )

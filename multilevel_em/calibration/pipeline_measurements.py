"""What a calibration measures along a user's pipeline's own trajectories (:class:`PipelineMeasurements`).

Made by :meth:`multilevel_em.diffusion.MultilevelModel.calibrate` with ``run(num_inference_steps)`` and read by
:func:`multilevel_em.calibration.schedules.plan_schedules`; a :class:`~multilevel_em.calibration.Calibration` files
one per sampler under ``schedules`` (:class:`~multilevel_em.calibration.model.ScheduleCalibration`). Validated
completely when built and when loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

__all__ = ["PipelineMeasurements"]

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

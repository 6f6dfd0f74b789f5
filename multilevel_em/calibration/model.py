"""The measured ladder as data: :class:`Calibration`, its fields, derived quantities and JSON file.

A :class:`Calibration` holds what :func:`~multilevel_em.calibrate` measured (costs, the
pairwise RMS differences of the levels at a few times, errors, gamma, the EM step-error
coefficient and the top level's bias).  Everything else is derived from it elsewhere, and its
methods of the same names call those modules:

* :mod:`.prediction`: :meth:`Calibration.rates` (lambda_l(t) = mu delta_l(t) / sqrt(C_l), C_l = c_l +
  c_{l-1}, docs/method.md, "Choosing the rates"), :meth:`Calibration.uniform_rates`, :meth:`Calibration.predict`;
* :mod:`.planning`: :meth:`Calibration.plan` (levels, steps and mu for a target error or a budget,
  against EM or the measured samplers) and :meth:`Calibration.plan_calls` (a fixed call grid), worded
  by :mod:`.verdicts`;
* :mod:`.rates`: the rate math they share; :mod:`.plot`: :meth:`Calibration.plot`.

Units: costs are in ``Calibration.cost_unit`` (seconds, FLOPs or the ladder's units, per
sample); "top-level equivalents" divide by the top level's cost; ``ladder_cost`` uses the
ladder's own costs, the units of :attr:`Solution.cost <multilevel_em.Solution.cost>`.
Errors are RMS over samples of Euclidean norms, in the state's units.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .._io import write_json
from . import planning, prediction
from .planning import CallPlan, Plan
from .plot import plot_calibration
from .prediction import Prediction
from .rates import PiecewiseLinearRate
from .samplers import SamplerFit

__all__ = ["CallPlan", "Calibration", "Plan", "Prediction", "PiecewiseLinearRate"]

FORMAT = "multilevel_em.Calibration"
FORMAT_VERSION = 1


@dataclass(eq=False)
class Calibration:
    """What :func:`~multilevel_em.calibrate` measured on a ladder of K levels at T times.

    Attributes:
        t0, t1: the time interval.
        times: calibration times, shape (T,).
        names: level names, K of them.
        costs: cost of one evaluation per sample, shape (K,), in ``cost_unit``.
        ladder_costs: the ladder's declared costs, shape (K,).
        timing: how ``costs`` were obtained: "wall", "flops" or "given".
        cost_unit: the unit of ``costs``.
        pairwise: ``pairwise[i, l, j] = sqrt(mean_b ||f^l - f^j||^2)`` at ``times[i]`` over the
            calibration states, shape (T, K, K), symmetric, 0-based levels; delta_l(t_i) is
            ``pairwise[i, l, l - 1]``.
        errors_t: RMS error of each level against the reference at each time, shape (T, K).
        reference: "given" (a true drift) or "top" (the top level).
        n_states: states per time.
        gamma, gamma_se: fitted cost exponent and its standard error (None if not fitted;
            gamma_se is nan with 2 fitted levels).
        fit_levels: 0-based levels used in the fit.
        step_error: a, the EM step-error coefficient (error of EM with the top level ~ a h,
            state units per unit time), or None if not measured.
        step_error_steps, step_error_refine: N and m of the EM runs with N and m N steps
            that measured it.
        top_bias: pathwise RMS error at t1 of the top level against the reference (0 when
            the reference is the top level), or None if not measured.
        top_bias_source: how ``top_bias`` was obtained.
        samplers: measured step-error curves of samplers, ``{name: SamplerFit}``
            (:mod:`multilevel_em.calibration.samplers`), used by ``plan(..., sampler=name)``;
            empty unless measured (e.g. ``MultilevelPipeline.calibrate_samplers``).
    """

    t0: float
    t1: float
    times: np.ndarray
    names: Tuple[str, ...]
    costs: np.ndarray
    ladder_costs: np.ndarray
    timing: str
    cost_unit: str
    pairwise: np.ndarray
    errors_t: np.ndarray
    reference: str
    n_states: int
    gamma: Optional[float] = None
    gamma_se: Optional[float] = None
    fit_levels: Tuple[int, ...] = ()
    step_error: Optional[float] = None
    step_error_steps: Optional[int] = None
    step_error_refine: Optional[int] = None
    top_bias: Optional[float] = None
    top_bias_source: str = "none"
    samplers: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ derived quantities

    @property
    def n_levels(self) -> int:
        return len(self.names)

    @property
    def deltas(self) -> np.ndarray:
        """delta_l(t_i) for l = 2..K, shape (T, K-1): ``deltas[i, l - 2] = rms(f^l - f^{l-1})``."""
        K = self.n_levels
        return self.pairwise[:, np.arange(1, K), np.arange(0, K - 1)]

    @property
    def errors(self) -> np.ndarray:
        """RMS error of each level against the reference over all states and times, shape (K,)."""
        return np.sqrt((self.errors_t**2).mean(0))

    def level_indices(self, levels: Optional[Sequence[int]]) -> Tuple[int, ...]:
        """``levels`` (0-based indices of a sub-ladder, default all) sorted and checked: 2 or more, in range."""
        K = self.n_levels
        if levels is None:
            return tuple(range(K))
        try:
            idx = sorted({range(K)[int(i)] for i in levels})
        except (TypeError, ValueError, IndexError):
            raise ValueError(f"levels: expected 0-based level indices in [0, {K - 1}], got {levels!r}") from None
        if len(idx) < 2:
            raise ValueError(f"levels: ML-EM needs at least 2 levels, got {idx}")
        return tuple(idx)

    def corrections(self, levels: Tuple[int, ...]) -> Tuple[np.ndarray, np.ndarray]:
        """delta of each correction of the sub-ladder at the measured times, (T, L-1), and C, (L-1,)."""
        lv = np.asarray(levels)
        delta = self.pairwise[:, lv[1:], lv[:-1]]
        C = self.costs[lv[1:]] + self.costs[lv[:-1]]
        return delta, C

    def delta_rms_in_time(self, delta: np.ndarray) -> np.ndarray:
        """sqrt of the time average over [t0, t1] of delta(t)^2 (the interpolant), per column."""
        ts = np.linspace(self.t0, self.t1, 4097)
        sq = np.stack([np.interp(ts, self.times, delta[:, c]) ** 2 for c in range(delta.shape[1])], 1)
        mean_sq = ((sq[1:] + sq[:-1]) / 2).mean(0)  # trapezoid rule on a uniform grid
        return np.sqrt(mean_sq)

    # ------------------------------------------------------------------ rates and predictions (.prediction)

    def rates(self, mu: float, levels: Optional[Sequence[int]] = None) -> List[PiecewiseLinearRate]:
        """Closed-form time-dependent rates lambda_l(t) = mu delta_l(t) / sqrt(C_l), per unit time
        (:func:`.prediction.rates`): ``len(levels) - 1`` callables of t, ready for ``solve(..., rates=...)``."""
        return prediction.rates(self, mu, levels)

    def uniform_rates(self, mu: float, levels: Optional[Sequence[int]] = None) -> List[float]:
        """Constant rates lambda_l = mu delta_l_bar / sqrt(C_l), for comparisons (:func:`.prediction.uniform_rates`)."""
        return prediction.uniform_rates(self, mu, levels)

    def predict(
        self, mu: float, steps: int, *, levels: Optional[Sequence[int]] = None, uniform: bool = False
    ) -> Prediction:
        """Expected cost and added variance per sample of ML-EM with ``rates(mu)`` on ``steps`` uniform steps
        (:func:`.prediction.predict`)."""
        return prediction.predict(self, mu, steps, levels=levels, uniform=uniform)

    # ------------------------------------------------------------------ planning (.planning)

    def plan(
        self,
        target: Optional[float] = None,
        *,
        budget: Optional[float] = None,
        steps: Optional[int] = None,
        max_steps: int = 2**16,
        sampler: Optional[str] = None,
    ) -> Plan:
        """Choose mu, the step count and the levels to keep, for a ``target`` RMS error or a ``budget`` in
        top-level equivalents per sample, optionally inside a measured ``sampler`` (:func:`.planning.plan`,
        which documents the error model, the search and what it raises)."""
        return planning.plan(self, target, budget=budget, steps=steps, max_steps=max_steps, sampler=sampler)

    def plan_calls(
        self, budget: float, times: Sequence[float], spans: Sequence[float], *, levels: Optional[Sequence[int]] = None
    ) -> CallPlan:
        """Closed-form rates sized to ``budget`` top-level equivalents per sample for a sampler whose model calls
        are fixed: call n at ``times[n]`` standing for ``spans[n]`` (shapes (calls,)) (:func:`.planning.plan_calls`)."""
        return planning.plan_calls(self, budget, times, spans, levels=levels)

    def sampler_fit(self, sampler: str) -> SamplerFit:
        """The measured :class:`SamplerFit` of ``sampler``; ValueError naming it (and how to measure it) if absent."""
        if sampler not in self.samplers:
            have = ", ".join(sorted(self.samplers)) or "none"
            raise ValueError(
                f"sampler {sampler!r}: this calibration has not measured it (measured: {have}); measure it with "
                f"MultilevelPipeline.calibrate_samplers(samplers=[{sampler!r}]) or "
                f"`mlem calibrate --ladder DIR --samplers {sampler}`"
            )
        return self.samplers[sampler]

    # ------------------------------------------------------------------ reports and files

    def summary(self) -> str:
        """A table for humans: per level its cost, error and delta, then gamma and the step error."""
        K = self.n_levels
        top = float(self.costs[-1])
        ref = "the reference drift" if self.reference == "given" else "the top level"
        delta_bar = np.concatenate([[math.nan], self.delta_rms_in_time(self.deltas)])
        d = self.deltas
        lines = [
            f"Calibration: {K} levels, {len(self.times)} times in [{self.t0:g}, {self.t1:g}], "
            f"{self.n_states} states per time; costs: {self.timing} ({self.cost_unit})",
            f"{'level':>5}  {'name':<14}{'cost':>11}{'cost/top':>10}{'error':>11}"
            f"{'delta rms':>11}{'delta(t first)':>16}{'delta(t last)':>15}",
        ]
        for l in range(K):
            first = f"{d[0, l - 1]:.4g}" if l else "-"
            last = f"{d[-1, l - 1]:.4g}" if l else "-"
            bar = f"{delta_bar[l]:.4g}" if l else "-"
            lines.append(
                f"{l + 1:>5}  {self.names[l][:13]:<14}{self.costs[l]:>11.4g}{self.costs[l] / top:>10.4g}"
                f"{self.errors[l]:>11.4g}{bar:>11}{first:>16}{last:>15}"
            )
        lines.append(f"error: RMS of ||f^l - ref|| against {ref}; delta: RMS of ||f^l - f^(l-1)||")
        if self.gamma is not None:
            se = "n/a (2 levels)" if self.gamma_se is None or math.isnan(self.gamma_se) else f"{self.gamma_se:.3g}"
            fit = ", ".join(str(l + 1) for l in self.fit_levels)
            lines.append(f"gamma = {self.gamma:.3g} +- {se} (levels {fit}; cost ~ error^-gamma)")
        if self.step_error is not None:
            lines.append(
                f"EM step error ~ a h with a = {self.step_error:.4g} (from {self.step_error_steps} and "
                f"{self.step_error_refine * self.step_error_steps} steps); top-level bias {self.top_bias:.4g} "
                f"({self.top_bias_source})"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        gamma = "None" if self.gamma is None else f"{self.gamma:.3g}"
        return f"Calibration({self.n_levels} levels, {len(self.times)} times, timing={self.timing!r}, gamma={gamma})"

    def to_dict(self) -> dict:
        """Plain JSON-serialisable data (nan as None)."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "t0": self.t0,
            "t1": self.t1,
            "times": self.times.tolist(),
            "names": list(self.names),
            "costs": self.costs.tolist(),
            "ladder_costs": self.ladder_costs.tolist(),
            "timing": self.timing,
            "cost_unit": self.cost_unit,
            "pairwise": self.pairwise.tolist(),
            "errors_t": self.errors_t.tolist(),
            "reference": self.reference,
            "n_states": self.n_states,
            "gamma": _none_if_nan(self.gamma),
            "gamma_se": _none_if_nan(self.gamma_se),
            "fit_levels": list(self.fit_levels),
            "step_error": _none_if_nan(self.step_error),
            "step_error_steps": self.step_error_steps,
            "step_error_refine": self.step_error_refine,
            "top_bias": _none_if_nan(self.top_bias),
            "top_bias_source": self.top_bias_source,
            "samplers": {k: v.to_dict() for k, v in self.samplers.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        """Inverse of :meth:`to_dict`; raises ValueError saying what is wrong."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f'not a calibration (expected "format": "{FORMAT}")')
        if d.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported calibration format version {d.get('version')!r} (expected {FORMAT_VERSION})")
        required = [
            "t0",
            "t1",
            "times",
            "names",
            "costs",
            "ladder_costs",
            "timing",
            "cost_unit",
            "pairwise",
            "errors_t",
            "reference",
            "n_states",
        ]
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"missing fields {missing}")
        try:
            times = np.asarray(d["times"], dtype=np.float64)
            costs = np.asarray(d["costs"], dtype=np.float64)
            ladder_costs = np.asarray(d["ladder_costs"], dtype=np.float64)
            pairwise = np.asarray(d["pairwise"], dtype=np.float64)
            errors_t = np.asarray(d["errors_t"], dtype=np.float64)
            t0, t1 = float(d["t0"]), float(d["t1"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"a numeric field is malformed ({e})") from None
        T, K = len(times), len(d["names"])
        shapes = {
            "times": (times.shape, (T,)),
            "costs": (costs.shape, (K,)),
            "ladder_costs": (ladder_costs.shape, (K,)),
            "pairwise": (pairwise.shape, (T, K, K)),
            "errors_t": (errors_t.shape, (T, K)),
        }
        for name, (got, want) in shapes.items():
            if got != want:
                raise ValueError(f"field {name!r} has shape {got}, expected {want} ({T} times, {K} levels)")
        for name, arr in (("times", times), ("costs", costs), ("pairwise", pairwise), ("errors_t", errors_t)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"field {name!r} has non-finite values")
        if K < 2 or T < 1 or np.any(costs <= 0) or np.any(pairwise < 0) or not t1 > t0:
            raise ValueError(
                "inconsistent values (need K >= 2 levels, positive costs, t1 > t0, nonnegative differences)"
            )

        def opt(key, kind):
            v = d.get(key)
            return None if v is None else kind(v)

        return cls(
            t0=t0,
            t1=t1,
            times=times,
            names=tuple(str(n) for n in d["names"]),
            costs=costs,
            ladder_costs=ladder_costs,
            timing=str(d["timing"]),
            cost_unit=str(d["cost_unit"]),
            pairwise=pairwise,
            errors_t=errors_t,
            reference=str(d["reference"]),
            n_states=int(d["n_states"]),
            gamma=opt("gamma", float),
            gamma_se=math.nan if d.get("gamma") is not None and d.get("gamma_se") is None else opt("gamma_se", float),
            fit_levels=tuple(int(l) for l in d.get("fit_levels", [])),
            step_error=opt("step_error", float),
            step_error_steps=opt("step_error_steps", int),
            step_error_refine=opt("step_error_refine", int),
            top_bias=opt("top_bias", float),
            top_bias_source=str(d.get("top_bias_source", "none")),
            samplers=_sampler_fits(d.get("samplers") or {}),
        )

    def plot(self, path) -> None:
        """Write a PNG of delta_l(t) and of error against cost with the gamma fit."""
        plot_calibration(self, path)

    def save(self, path) -> None:
        """Write :meth:`to_dict` as JSON, atomically (a temporary file, then ``os.replace``)."""
        write_json(path, self.to_dict(), indent=1, allow_nan=False)

    @classmethod
    def load(cls, path) -> "Calibration":
        """Read a file written by :meth:`save`; ValueError naming the file if it is not one."""
        path = os.fspath(path)
        with open(path) as f:
            text = f.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a calibration file: invalid JSON ({e})") from None
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: invalid calibration file: {e}") from None

    def __eq__(self, other) -> bool:
        if not isinstance(other, Calibration):
            return NotImplemented
        return self.to_dict() == other.to_dict()


# ----------------------------------------------------------------------------- helpers


def _sampler_fits(d) -> dict:
    if not isinstance(d, dict):
        raise ValueError("field 'samplers': expected an object {name: fit}")
    out = {}
    for name, v in d.items():
        try:
            out[str(name)] = SamplerFit.from_dict(v)
        except ValueError as e:
            raise ValueError(f"field 'samplers', {name!r}: {e}") from None
    return out


def _none_if_nan(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

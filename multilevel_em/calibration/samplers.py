"""How a sampler's error falls with its step count, as measured data (:class:`SamplerFit`).

A :class:`~multilevel_em.Calibration` models EM on a uniform grid (step error ``a h``).
Users run other samplers (DDIM, DPM-Solver++, ...), whose error falls faster with the step
count and which weigh the model's output differently. A :class:`SamplerFit` holds what was
measured for one sampler on the ladder's own trajectories (measuring needs the sampler, so
it happens outside this package: :meth:`multilevel_em.images.MultilevelPipeline.calibrate_samplers`):

* ``errors[i]``: RMS over samples of ``|x_N - x_ref|`` (Euclidean norm over the state, state
  units) for the top level alone with ``steps[i]`` steps of the sampler, against the same
  sampler with ``ref_steps`` steps from the same initial noise (and, for SDE samplers, the
  same Brownian path): the sampler's own converged solution. SDE samplers converge to the
  reverse-SDE path, ODE samplers to the probability-flow ODE solution; the two limits have
  the same law but are different maps from the noise, so errors of samplers of different
  families are distances to different limits (both measure how far a run is from converged).
* ``order``, ``constant``: the least-squares fit ``error ~ constant * N^-order`` over the
  measured steps, with ``order_se``.
* the randomization gain at N steps: the squared RMS difference between ML-EM inside the
  sampler and the top level alone with the same N steps, on the same noise, divided by the
  calibration's predicted added variance ``V`` (:attr:`Prediction.added_variance
  <multilevel_em.calibration.Prediction.added_variance>`): how much of the randomization the
  sampler keeps (``V`` ignores propagation through the dynamics and the sampler's weighting
  of each call; an SDE damps early errors, an ODE carries them to the end). ``gain_points``
  holds the measurements; :meth:`SamplerFit.gain_at` interpolates them log-log in N
  (constant beyond the measured step counts); ``gain`` is their geometric mean.

ML-EM inside the sampler with N steps and rate scale mu is then predicted to have
``error^2 = bias^2 + error(N)^2 + gain_at(N) * V(mu, N)`` (the randomization has mean zero
and is treated as independent of the step error).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .._fit import loglog_slope

__all__ = ["SamplerFit", "FAMILIES", "combine_gains"]

#: What a sampler converges to: "sde" (the reverse-SDE path for its Brownian motion) or "ode"
#: (the probability-flow ODE solution from its initial noise).
FAMILIES = ("sde", "ode")


@dataclass
class SamplerFit:
    """The measured step-error curve of one sampler and its randomization gain (module docstring).

    Attributes:
        sampler: the sampler's name (e.g. "dpmpp_2m").
        family: "sde" or "ode" (what its converged solution is).
        steps: measured step counts, increasing, shape (S,).
        errors: RMS error of the top level alone at each step count against ``ref_steps``
            steps, state units, shape (S,).
        errors_se: their standard errors over the samples (delta method), shape (S,).
        ref_steps: the step count of the converged solution.
        n: samples measured.
        order, order_se, constant: the fit ``error ~ constant * N^-order``.
        gain, gain_se: randomization gain (module docstring) and the standard error of its log
            (nan with one point); 1.0 with no measurement.
        gain_points: one dict per measurement: steps, mu, levels, measured and predicted variance.
    """

    sampler: str
    family: str
    steps: Tuple[int, ...]
    errors: Tuple[float, ...]
    errors_se: Tuple[float, ...]
    ref_steps: int
    n: int
    order: float = field(init=False)
    order_se: float = field(init=False)
    constant: float = field(init=False)
    gain: float = 1.0
    gain_se: float = math.nan
    gain_points: List[dict] = field(default_factory=list)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family: expected one of {FAMILIES}, got {self.family!r}")
        steps = np.asarray(self.steps, dtype=np.float64)
        errors = np.asarray(self.errors, dtype=np.float64)
        if steps.ndim != 1 or steps.shape != errors.shape or len(steps) < 2:
            raise ValueError(f"steps, errors: expected two equal-length sequences of 2 or more, got "
                             f"{len(self.steps)} and {len(self.errors)}")
        if len(self.errors_se) != len(steps):
            raise ValueError(f"errors_se: expected {len(steps)} values, got {len(self.errors_se)}")
        if np.any(np.diff(steps) <= 0) or steps[0] < 1:
            raise ValueError(f"steps: expected increasing step counts >= 1, got {list(self.steps)}")
        if not (np.all(np.isfinite(errors)) and np.all(errors > 0)):
            raise ValueError(f"errors: expected positive finite errors, got {list(self.errors)}")
        if not (math.isfinite(self.gain) and self.gain > 0):
            raise ValueError(f"gain: expected a positive finite number, got {self.gain!r}")
        self.steps = tuple(int(s) for s in self.steps)
        self.errors = tuple(float(e) for e in self.errors)
        self.errors_se = tuple(float(e) for e in self.errors_se)
        # error = constant N^-order: loglog_slope fits log(1/error) = order log(N) + c.
        self.order, self.order_se = loglog_slope(1.0 / errors, 1.0 / steps)
        self.constant = float(math.exp(np.mean(np.log(errors) + self.order * np.log(steps))))
        # Predictions interpolate the measured errors as they are: a rise with more steps can be real
        # (diffusers' DDIM steps by T // N timesteps, so step counts that do not divide T are worse).
        self._curve = errors

    def error(self, steps) -> float:
        """Predicted error of the top level alone with ``steps`` steps (state units).

        Log-log interpolation of the measured errors inside the measured range (not made
        monotone: between measured step counts it knows nothing of, e.g., DDIM's divisors);
        outside it the fitted order (at least 0) continues the nearest end point.
        """
        n = float(steps)
        if not n >= 1:
            raise ValueError(f"steps: expected a step count >= 1, got {steps!r}")
        s = np.log(np.asarray(self.steps, dtype=np.float64))
        e = np.log(self._curve)
        q = max(self.order, 0.0)
        ln = math.log(n)
        if ln <= s[0]:
            return float(math.exp(e[0] + q * (s[0] - ln)))
        if ln >= s[-1]:
            return float(math.exp(e[-1] - q * (ln - s[-1])))
        return float(math.exp(np.interp(ln, s, e)))

    def gain_at(self, steps) -> float:
        """The randomization gain at ``steps`` steps: log-log interpolation of the measured points (module
        docstring), constant beyond them; ``gain`` when nothing was measured."""
        pts = sorted((p["steps"], p["measured_variance"] / p["predicted_variance"]) for p in self.gain_points
                     if p.get("measured_variance", 0) > 0 and p.get("predicted_variance", 0) > 0)
        if not pts:
            return self.gain
        s = np.log([p[0] for p in pts])
        g = np.log([p[1] for p in pts])
        return float(math.exp(np.interp(math.log(float(steps)), s, g)))

    def steps_for(self, target: float, max_steps: int = 2**16) -> Optional[int]:
        """The fewest steps whose predicted :meth:`error` is at most ``target``; None if none up to ``max_steps``.

        Exact for the interpolant: it is monotone between consecutive measured step counts, so the segments
        are scanned in order (the measured curve may rise again, so a bisection would not do)."""
        if not target > 0:
            return None
        knots = [1] + [k for k in self.steps if 1 < k < max_steps] + [max_steps]
        for lo, hi in zip(knots[:-1], knots[1:]):
            if self.error(lo) <= target:
                return lo
            if self.error(hi) <= target:  # error(lo) > target >= error(hi): bisect inside the segment
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    lo, hi = (lo, mid) if self.error(mid) <= target else (mid, hi)
                return hi
        return None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gain_se"] = None if math.isnan(self.gain_se) else self.gain_se
        for k in ("order", "order_se", "constant"):  # derived, written for readers
            v = getattr(self, k)
            d[k] = None if isinstance(v, float) and math.isnan(v) else v
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SamplerFit":
        """Inverse of :meth:`to_dict`; ValueError saying what is wrong."""
        try:
            return cls(sampler=str(d["sampler"]), family=str(d["family"]), steps=tuple(d["steps"]),
                       errors=tuple(d["errors"]), errors_se=tuple(d["errors_se"]), ref_steps=int(d["ref_steps"]),
                       n=int(d["n"]), gain=float(d.get("gain", 1.0)),
                       gain_se=math.nan if d.get("gain_se") is None else float(d["gain_se"]),
                       gain_points=list(d.get("gain_points", [])))
        except (KeyError, TypeError) as e:
            raise ValueError(f"sampler fit: malformed ({e!r})") from None


def combine_gains(measured: Sequence[float], predicted: Sequence[float]) -> Tuple[float, float]:
    """Geometric mean of measured / predicted variances and the standard error of its log (nan for one)."""
    r = np.log(np.asarray(measured, dtype=np.float64) / np.asarray(predicted, dtype=np.float64))
    if r.size == 0 or not np.all(np.isfinite(r)):
        raise ValueError("gain: expected positive finite measured and predicted variances")
    se = float(r.std(ddof=1) / math.sqrt(r.size)) if r.size > 1 else math.nan
    return float(math.exp(r.mean())), se

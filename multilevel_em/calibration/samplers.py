"""How a sampler's error falls with its step count, as measured data (:class:`SamplerFit`).

A :class:`~multilevel_em.Calibration` models EM on a uniform grid (step error ``a h``).
Users run other samplers (DDIM, DPM-Solver++, ...), whose error falls faster with the step
count and which weigh the model's output differently. A :class:`SamplerFit` holds what was
measured for one sampler on the ladder's own trajectories by :func:`measure_samplers`, which runs
the sampler through a callable it is given (this package runs no sampler itself;
:meth:`multilevel_em.images.MultilevelPipeline.calibrate_samplers` passes its own):

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

Measuring (:func:`measure_samplers`): for a sampler S the top level alone is run with ``ref_steps``
steps (S's converged solution) and with each of ``steps`` steps, all from the same ``n`` initial
noises and, for the SDE sampler "em", the same Brownian path. Then ML-EM inside S is run at a few
(steps, rate scale) points and its squared RMS distance to the top level alone with the same steps
is divided by the calibration's predicted added variance: S's randomization gain. Which samplers can be
measured, and their families, is the caller's to say (``{name: family}``; the sampler registry's
:func:`~multilevel_em.diffusion.registry.measurable_samplers` for the diffusion samplers): a sampler is
measurable when runs with different step counts share their noise. "ddpm" is not: its scheduler draws
fresh noise for every step count, so a pathwise converged solution does not exist (use "em", which
integrates the same SDE).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .._fit import loglog_slope
from .fields import FieldError, check_keys, integer, integers, join, optional_real, real, real_array, text

__all__ = [
    "SamplerFit",
    "FAMILIES",
    "combine_gains",
    "CURVE_STEPS",
    "GAIN_STEPS",
    "GAIN_BUDGET_FRACTION",
    "check_samplers",
    "fit_table",
    "measure_samplers",
    "rms_error",
    "squared_distances",
]

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
            raise ValueError(
                f"steps, errors: expected two equal-length sequences of 2 or more, got "
                f"{len(self.steps)} and {len(self.errors)}"
            )
        if len(self.errors_se) != len(steps):
            raise ValueError(f"errors_se: expected {len(steps)} values, got {len(self.errors_se)}")
        if np.any(np.diff(steps) <= 0) or steps[0] < 1:
            raise ValueError(f"steps: expected increasing step counts >= 1, got {list(self.steps)}")
        if not (np.all(np.isfinite(errors)) and np.all(errors > 0)):
            raise ValueError(f"errors: expected positive finite errors, got {list(self.errors)}")
        if not (math.isfinite(self.gain) and self.gain > 0):
            raise ValueError(f"gain: expected a positive finite number, got {self.gain!r}")
        if isinstance(self.gain_points, (str, bytes, dict)) or not isinstance(self.gain_points, (list, tuple)):
            raise FieldError("gain_points", f"expected a list of measurements, got {self.gain_points!r:.80}")
        self.gain_points = [_gain_point(p, f"gain_points[{i}]", self.steps) for i, p in enumerate(self.gain_points)]
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
        pts = sorted(
            (p["steps"], p["measured_variance"] / p["predicted_variance"])
            for p in self.gain_points
            if p.get("measured_variance", 0) > 0 and p.get("predicted_variance", 0) > 0
        )
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
    def from_dict(cls, d: dict, where: str = "", n_levels: Optional[int] = None) -> "SamplerFit":
        """Inverse of :meth:`to_dict`, checking every field; ValueError (a
        :class:`~multilevel_em.calibration.fields.FieldError`) whose message starts with the field at fault,
        inside ``where`` (``samplers.em.gain_points[1].steps: ...``).  ``n_levels``: the calibration's level
        count, to check the gain points' levels (1-based, with the top level)."""
        check_keys(d, where, _FIT_REQUIRED, _FIT_OPTIONAL)
        at = lambda k: join(where, k)  # noqa: E731
        sampler = text(d["sampler"], at("sampler"))
        family = text(d["family"], at("family"), FAMILIES)
        steps = integers(d["steps"], at("steps"), lo=1)
        S = len(steps)
        if S < 2 or any(b <= a for a, b in zip(steps, steps[1:])):
            raise FieldError(at("steps"), f"expected 2 or more increasing step counts >= 1, got {list(steps)}")
        errors = real_array(d["errors"], at("errors"), (S,), "(steps,)", lo=0.0)
        if np.any(errors <= 0):
            i = int(np.argmax(errors <= 0))
            raise FieldError(at(f"errors[{i}]"), f"expected a positive error, got {float(errors[i])!r}")
        errors_se = real_array(d["errors_se"], at("errors_se"), (S,), "(steps,)", lo=0.0)
        ref_steps = integer(d["ref_steps"], at("ref_steps"), lo=steps[-1] + 1)
        n = integer(d["n"], at("n"), lo=2)
        for k in ("order", "order_se", "constant"):  # derived from the above and recomputed; written for readers
            optional_real(d.get(k), at(k))
        gain = real(d.get("gain", 1.0), at("gain"), lo=0.0, lo_open=True)
        gain_se = optional_real(d.get("gain_se"), at("gain_se"), lo=0.0)
        try:
            fit = cls(
                sampler=sampler,
                family=family,
                steps=steps,
                errors=tuple(errors.tolist()),
                errors_se=tuple(errors_se.tolist()),
                ref_steps=ref_steps,
                n=n,
                gain=gain,
                gain_se=math.nan if gain_se is None else gain_se,
                gain_points=d.get("gain_points", []),
            )
        except FieldError as e:
            raise e.within(where) from None
        except ValueError as e:
            raise FieldError(where, str(e)) from None
        if n_levels is not None:
            for i, p in enumerate(fit.gain_points):
                lv = p.get("levels")
                if lv is not None and (len(lv) < 2 or lv[-1] != n_levels):
                    raise FieldError(
                        at(f"gain_points[{i}].levels"),
                        f"expected 2 or more levels of the {n_levels} (1-based), ending with the top level "
                        f"{n_levels}, got {lv}",
                    )
        return fit


_FIT_REQUIRED = ("sampler", "family", "steps", "errors", "errors_se", "ref_steps", "n")
_FIT_OPTIONAL = ("order", "order_se", "constant", "gain", "gain_se", "gain_points")
_POINT_REQUIRED = ("steps", "measured_variance", "predicted_variance")
_POINT_OPTIONAL = ("mu", "levels", "measured_variance_se")


def _gain_point(p, where: str, steps: Sequence[int]) -> dict:
    """One gain measurement checked (its step count among the measured ``steps``); ``where`` names it."""
    check_keys(p, where, _POINT_REQUIRED, _POINT_OPTIONAL)
    out = dict(p)
    out["steps"] = k = integer(p["steps"], join(where, "steps"), lo=1)
    if k not in steps:
        raise FieldError(join(where, "steps"), f"expected one of the measured step counts {list(steps)}, got {k}")
    for key in ("measured_variance", "predicted_variance", "measured_variance_se"):
        if key in p:
            out[key] = real(p[key], join(where, key), lo=0.0)
    if "mu" in p:
        out["mu"] = real(p["mu"], join(where, "mu"), lo=0.0)
    if "levels" in p:
        lv = out["levels"] = list(integers(p["levels"], join(where, "levels"), lo=1))
        if any(b <= a for a, b in zip(lv, lv[1:])):
            raise FieldError(join(where, "levels"), f"expected increasing 1-based levels, got {lv}")
    return out


def combine_gains(measured: Sequence[float], predicted: Sequence[float]) -> Tuple[float, float]:
    """Geometric mean of measured / predicted variances and the standard error of its log (nan for one)."""
    r = np.log(np.asarray(measured, dtype=np.float64) / np.asarray(predicted, dtype=np.float64))
    if r.size == 0 or not np.all(np.isfinite(r)):
        raise ValueError("gain: expected positive finite measured and predicted variances")
    se = float(r.std(ddof=1) / math.sqrt(r.size)) if r.size > 1 else math.nan
    return float(math.exp(r.mean())), se


# ----------------------------------------------------------------------------- measuring samplers

#: Step counts of the measured curve (the budgets users run: a few to a few hundred steps).
CURVE_STEPS = (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
#: Step counts at which ML-EM's randomization gain is measured, and the budget (a fraction of the
#: top level alone at those steps) whose planned rate scale is used there.
GAIN_STEPS = (8, 32, 128)
GAIN_BUDGET_FRACTION = 0.25


def squared_distances(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-sample squared Euclidean distance ``|x_b - ref_b|^2``, float64, shape (n,)."""
    return (x - ref).double().flatten(1).pow(2).sum(1)


def rms_error(sq: torch.Tensor) -> tuple:
    """From per-sample squared distances (n,): the RMS error, its delta-method se, the mean square and its se."""
    m = float(sq.mean())
    se_sq = float(sq.std()) / math.sqrt(sq.numel()) if sq.numel() > 1 else math.nan
    rms = math.sqrt(m)
    return rms, (se_sq / (2 * rms) if rms > 0 else math.nan), m, se_sq


def check_samplers(samplers: Sequence[str], measurable: Mapping[str, str]) -> Dict[str, str]:
    """The names, validated against ``measurable`` (``{name: family}``): ``{name: family}`` in the order given,
    no repeats; ValueError naming the bad one and why."""
    out = {}
    for s in samplers:
        if s == "ddpm" and s not in measurable:
            raise ValueError(
                "samplers: 'ddpm' cannot be measured pathwise: its scheduler draws fresh noise for every step "
                "count, so there is no converged solution to measure against; use 'em' (the same reverse SDE)"
            )
        if s not in measurable:
            raise ValueError(f"samplers: expected some of {', '.join(measurable)}, got {s!r}")
        if measurable[s] not in FAMILIES:
            raise ValueError(f"samplers: {s!r} has family {measurable[s]!r}; expected one of {FAMILIES}")
        out.setdefault(s, measurable[s])
    if not out:
        raise ValueError("samplers: expected at least one sampler name")
    return out


#: ``run(sampler, steps, plan=None) -> samples``: the top level alone with ``sampler`` for ``steps`` steps,
#: or, with a :class:`~multilevel_em.calibration.Plan`, ML-EM with its levels and rates inside ``sampler``;
#: always the same n initial noises (and Brownian path), samples shaped (n, ...) in state units.
SamplerRun = Callable[..., torch.Tensor]


def measure_samplers(
    run: SamplerRun,
    calibration,
    samplers: Mapping[str, str],
    *,
    n: int = 16,
    steps: Sequence[int] = CURVE_STEPS,
    ref_steps: int = 500,
    gain_steps: Sequence[int] = GAIN_STEPS,
    cheapest: float,
    num_train_timesteps: Optional[int] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, SamplerFit]:
    """Measure each sampler's step-error curve and ML-EM's randomization gain inside it.

    Args:
        run: runs the sampler (:data:`SamplerRun`): ``run(s, k)`` the top level alone with sampler ``s`` and
            ``k`` steps, ``run(s, k, plan)`` ML-EM with ``plan``'s levels and rates inside ``s``; every call
            from the same ``n`` noises.
        calibration: the ladder's :class:`~multilevel_em.Calibration` (for the gain's plans and predicted
            variance); None raises ValueError after the arguments are checked.
        samplers: ``{name: family}`` of the samplers to measure (family "sde" or "ode"; see
            :func:`~multilevel_em.diffusion.registry.measurable_samplers`).
        n: the number of samples ``run`` draws (>= 2: errors are RMS over them).
        steps: step counts of the curve, each < ``ref_steps``.
        ref_steps: the step count of each sampler's converged solution; with "ddim" it must divide
            ``num_train_timesteps`` (diffusers' DDIMScheduler steps by ``T // N`` timesteps, so any other N
            leaves its steps short of the grid and it converges to something else).
        gain_steps: step counts where the gain is measured (each must be in ``steps``); at each the
            rate scale is the calibration's plan for a quarter of the top level's cost at those steps.
        cheapest: the cheapest level's cost over the top level's (the plans keep a budget of at least twice it).
        num_train_timesteps: the schedule's T, for the "ddim" check (None: not checked).
        progress: called with a short description before each run.

    Returns:
        ``{sampler: SamplerFit}``. Cost: about ``ref_steps + sum(steps)`` top-level evaluations of
        ``n`` samples per sampler, plus the ML-EM runs.
    """
    if not isinstance(samplers, Mapping):
        raise TypeError(
            f"samplers: expected {{name: family}} (e.g. {{'em': 'sde'}}; the registry's "
            f"measurable_samplers()), got {samplers!r}"
        )
    samplers = check_samplers(list(samplers), samplers)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n: expected an int >= 2 (errors are RMS over images), got {n!r}")
    steps = sorted({int(s) for s in steps})
    if len(steps) < 2 or steps[0] < 1 or steps[-1] >= ref_steps:
        raise ValueError(f"steps: expected 2 or more step counts in [1, ref_steps = {ref_steps}), got {steps}")
    missing = [g for g in gain_steps if g not in steps]
    if missing:
        raise ValueError(f"gain_steps: {missing} not among the measured steps {steps}")
    T = num_train_timesteps
    if "ddim" in samplers and T is not None and T % ref_steps:
        raise ValueError(
            f"ref_steps: {ref_steps} does not divide num_train_timesteps = {T}; DDIM's scheduler steps by "
            f"T // N timesteps, so its {ref_steps}-step run is not converged; use a divisor of {T}"
        )
    if calibration is None:
        raise ValueError("the pipeline has no calibration: run pipe.calibrate() first (the gain needs its rates)")
    say = progress or (lambda _: None)
    fits = {}
    for s in samplers:
        errors, ses, tops = _step_error_curve(run, s, steps, ref_steps, gain_steps, say)
        gain, gain_se, points = _randomization_gain(run, calibration, s, gain_steps, tops, cheapest, say)
        fits[s] = SamplerFit(
            sampler=s,
            family=samplers[s],
            steps=tuple(steps),
            errors=tuple(errors),
            errors_se=tuple(ses),
            ref_steps=int(ref_steps),
            n=n,
            gain=gain,
            gain_se=gain_se,
            gain_points=points,
        )
    return fits


def _step_error_curve(
    run: SamplerRun, s: str, steps: Sequence[int], ref_steps: int, gain_steps: Sequence[int], say: Callable[[str], None]
) -> tuple:
    """Sampler ``s``'s RMS errors and their standard errors at ``steps`` against ``ref_steps`` steps, and the
    top-level samples at ``gain_steps`` ({steps: samples}) for the gain."""
    say(f"{s}: {ref_steps} steps (reference)")
    ref = run(s, ref_steps)
    errors, ses, tops = [], [], {}
    for k in steps:
        say(f"{s}: {k} steps")
        x = run(s, k)
        if k in gain_steps:
            tops[k] = x
        e, se, _, _ = rms_error(squared_distances(x, ref))
        errors.append(e)
        ses.append(se)
    return errors, ses, tops


def _randomization_gain(
    run: SamplerRun, cal, s: str, gain_steps: Sequence[int], tops: dict, cheapest: float, say: Callable[[str], None]
) -> tuple:
    """ML-EM's measured added variance inside ``s`` over the calibration's predicted one, at ``gain_steps``:
    (gain, standard error of its log, the measured points)."""
    measured, predicted, points = [], [], []
    for k in gain_steps:
        budget = k * max(GAIN_BUDGET_FRACTION, 2 * cheapest)
        if budget >= k:
            continue  # the base level alone is too dear for ML-EM to differ from the top level here
        plan = cal.plan(budget=budget, steps=k)
        say(f"{s}: ML-EM, {k} steps, mu={plan.mu:.3g}")
        x = run(s, k, plan)
        _, _, var, var_se = rms_error(squared_distances(x, tops[k]))
        pred = plan.prediction.added_variance
        if var > 0 and pred > 0:
            measured.append(var)
            predicted.append(pred)
        points.append(
            {
                "steps": k,
                "mu": plan.mu,
                "levels": [l + 1 for l in plan.levels],
                "measured_variance": var,
                "measured_variance_se": var_se,
                "predicted_variance": pred,
            }
        )
    gain, gain_se = combine_gains(measured, predicted) if measured else (1.0, math.nan)
    return gain, gain_se, points


def fit_table(fits: Dict[str, SamplerFit]) -> str:
    """A table for humans: per sampler its order, gain and errors at the measured steps."""
    lines = []
    for s, f in fits.items():
        se = "n/a" if math.isnan(f.order_se) else f"{f.order_se:.2g}"
        gse = "n/a" if math.isnan(f.gain_se) else f"x/ {math.exp(f.gain_se):.2g}"
        lines.append(
            f"{s:>10} ({f.family}): error ~ {f.constant:.3g} N^-{f.order:.3g} (+- {se}), "
            f"ML-EM randomization gain {f.gain:.3g} ({gse}); errors vs {f.ref_steps} steps: "
            + ", ".join(f"{k}: {e:.3g}" for k, e in zip(f.steps, f.errors))
        )
    return "\n".join(lines)

"""Sampling loops over a denoiser: reverse-SDE EM, DDPM, DDIM, probability-flow Euler, DPM-Solver++ 2M.

Every sampler here evaluates the denoiser once per step, and every step is affine in that
output given the past (docs/method.md, "Samplers and schedulers"), so a :class:`MultilevelDenoiser` keeps each
step unbiased for its top model.  Before each evaluation the loop calls
``denoiser.set_step(h, index=n, steps=N)``: the step's size and index, given explicitly.

The samplers' names and what each needs (family, options, diffusers scheduler, default steps)
are listed once, in :mod:`.registry`; a sampler is one loop function here plus one entry there.

* ``"em"`` and ``"euler_ode"`` are written here, on a uniform grid in t from
  ``schedule.t_max`` down to ``t_min``; "em" draws its Brownian increments from a
  :class:`~multilevel_em.BrownianPath` (pass ``noise=`` to share one between runs).
* ``"ddpm"``, ``"ddim"`` and ``"dpmpp_2m"`` drive diffusers' ``DDPMScheduler``,
  ``DDIMScheduler`` and ``DPMSolverMultistepScheduler`` (``algorithm_type="dpmsolver++"``,
  ``solver_order=2``) exactly as a diffusers pipeline does (``set_timesteps(steps)``, then
  ``step(eps, k, x, generator=...)``), built from ``schedule.diffusers_config()`` with
  ``clip_sample=False``, ``thresholding=False`` and ``timestep_spacing="trailing"`` (the first
  evaluation is at t = 1).  They evaluate the denoiser at t = schedule.time(k) and end at the
  clean sample, as diffusers does; ``t_min`` does not apply to them.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from ..engine import BrownianPath
from ..engine.random import check_generators, is_per_sample, randn
from .denoisers import MultilevelDenoiser, TStitchDenoiser, _LadderDenoiser
from .outputs import model_output
from .registry import COMMON_OPTIONS, SAMPLERS, SamplerSpec, sampler_spec
from .schedule import VPSchedule

__all__ = ["sample", "Samples", "SAMPLERS", "make_scheduler", "em_loop", "euler_ode_loop", "scheduler_loop"]

#: Called after every step: ``callback(n, steps)`` with n the 0-based index of the step just taken.
StepCallback = Callable[[int, int], None]
# Scheduler settings that would change the noise schedule or the algorithm behind a sampler's name.
_FIXED_KEYS = {
    "num_train_timesteps": "it comes from `schedule`",
    "beta_start": "it comes from `schedule`",
    "beta_end": "it comes from `schedule`",
    "beta_schedule": "it comes from `schedule`",
    "trained_betas": "it comes from `schedule`",
    "rescale_betas_zero_snr": "it would change `schedule`",
    "prediction_type": "the denoiser predicts eps",
    "algorithm_type": "the sampler name fixes it",
    "solver_order": "the sampler name fixes it",
}


@dataclass
class Samples:
    """The result of :func:`sample`.

    Attributes:
        x: the samples, shape of ``x_T``.
        top_equivalents: mean cost per sample in top-level equivalents (one evaluation of the
            most expensive level per sample = 1; a single model with N steps costs N).
            Formerly ``cost``, which still reads it (deprecated).
        evaluations: sample-evaluations of each level during this run.
        costs: the levels' costs (units of the denoiser; a single model has cost 1).
        times: the continuous times at which the denoiser was evaluated, float64, one per step.
        sampler: the sampler's name.
        steps: the number of steps (= denoiser evaluations per sample).
    """

    x: torch.Tensor
    top_equivalents: float
    evaluations: Tuple[int, ...]
    costs: Tuple[float, ...]
    times: torch.Tensor
    sampler: str
    steps: int

    @property
    def cost(self) -> float:
        """Deprecated: :attr:`top_equivalents` (top-level equivalents per sample)."""
        warnings.warn(
            "Samples.cost is deprecated; read Samples.top_equivalents (top-level equivalents per sample)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.top_equivalents


def _refuse(name: str, why: str, force: bool) -> None:
    if not force:
        raise ValueError(
            f"{name}: refused because {why}; a step is then no longer affine in the network output, so a "
            "MultilevelDenoiser is no longer unbiased for its top model. Pass force=True to use it anyway."
        )


def _denoiser(denoiser, stitch, schedule: VPSchedule) -> _LadderDenoiser:
    if stitch is not None:
        if denoiser is not None:
            raise ValueError(
                "stitch: T-Stitch brings its own models; pass denoiser=None with stitch=(models, fractions)"
            )
        try:
            models, fractions = stitch
        except (TypeError, ValueError):
            raise TypeError("stitch: expected a pair (models, fractions)") from None
        if isinstance(models, _LadderDenoiser):
            return TStitchDenoiser(models.ladder, fractions, schedule=schedule)
        return TStitchDenoiser(models, fractions, schedule=schedule)
    if isinstance(denoiser, _LadderDenoiser):
        return denoiser
    if denoiser is None:
        raise TypeError("denoiser: expected an eps model, a MultilevelDenoiser or a diffusers model, got None")
    # One model: the same bookkeeping (shape check, counting) as a one-level ladder, whose call is the model's.
    return MultilevelDenoiser([denoiser], costs=[1.0], schedule=schedule)


def sample(
    denoiser,
    x_T: torch.Tensor,
    *,
    schedule: VPSchedule,
    steps: int,
    sampler: str,
    generator: Optional[torch.Generator] = None,
    t_min: float = 1e-3,
    callback: Optional[StepCallback] = None,
    **opts,
) -> Samples:
    """Generate samples by integrating from t = 1 (pure noise ``x_T``) down to the data.

    Args:
        denoiser: an eps model ``(x, t) -> eps`` of continuous t, a diffusers ``UNet2DModel``
            (wrapped in :class:`DiffusersUNetAdapter`), a :class:`MultilevelDenoiser` or a
            :class:`TStitchDenoiser`; None with ``stitch=``.
        x_T: the initial noise, shape ``(batch, ...)``, usually standard normal.
        schedule: the :class:`VPSchedule` the models were trained with.
        steps: number of steps (one denoiser evaluation each).
        sampler: one of :data:`SAMPLERS` (``"em"``, ``"ddpm"``, ``"ddim"``, ``"euler_ode"``,
            ``"dpmpp_2m"``; :mod:`.registry` lists them).
        generator: for the sampler's noise ("em"'s Brownian path, the schedulers' variance
            noise); or a list of generators, one per sample (diffusers' convention): row b's
            noise then comes from ``generator[b]`` alone ("em" draws its increments
            step by step, without a BrownianPath). The MultilevelDenoiser's level draws use
            its own generator.
        t_min: where "em" and "euler_ode" stop (their drifts are singular at t = 0).
        callback: called after every step as ``callback(n, steps)``, n the 0-based index of the
            step just taken (a progress bar's tick).

    Options (``**opts``):
        noise: ("em") a :class:`~multilevel_em.BrownianPath` of x_T's shape covering
            [t_min, schedule.t_max]; runs sharing it share their Brownian motion.
        eta: ("ddim") 0 for deterministic DDIM (default), 1 for DDPM-like noise.  With eta = 1
            and the same timesteps a DDIM step is DDPM's ancestral step (fixed_small variance).
        noise: ("ddim" with eta > 0) a :class:`~multilevel_em.BrownianPath` of x_T's shape
            covering [t_end, 1] for some t_end > 0: step n from t_n to t_{n+1} takes its variance
            noise (W(t_n) - W(t_{n+1})) / sqrt(t_n - t_{n+1}) (t_{n+1} raised to t_end), so
            that runs sharing the path share their Brownian motion with the "em" sampler.
        scheduler_config: (scheduler samplers) extra diffusers scheduler settings, e.g.
            ``{"timestep_spacing": "leading"}`` or ``{"variance_type": "fixed_large"}``.
        stitch: ``(models, fractions)``: the T-Stitch baseline (see :class:`TStitchDenoiser`);
            models may be a Ladder or a MultilevelDenoiser to bring their costs.
        clip_sample, thresholding, guidance_rescale: refused (ValueError), because they make
            a step nonlinear in eps, unless ``force=True``.

    Returns:
        :class:`Samples` with the samples and the cost actually spent.
    """
    spec = sampler_spec(sampler)
    unknown = set(opts) - spec.options - COMMON_OPTIONS
    if unknown:
        valid = sorted(spec.options | COMMON_OPTIONS)
        raise TypeError(
            f"sample: unknown option(s) {sorted(unknown)} for sampler {sampler!r}; expected some of {valid}"
        )
    if not isinstance(schedule, VPSchedule):
        raise TypeError(f"schedule: expected a VPSchedule, got {type(schedule).__name__}")
    if not isinstance(x_T, torch.Tensor) or x_T.ndim < 1 or not x_T.dtype.is_floating_point:
        raise ValueError("x_T: expected a floating tensor of shape (batch, ...)")
    if not bool(torch.isfinite(x_T).all()):
        raise ValueError("x_T: contains NaN or Inf")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
    check_generators(generator, x_T.shape[0])
    if is_per_sample(generator):
        if opts.get("noise") is not None:
            raise ValueError("noise: a shared BrownianPath and per-sample generators exclude each other; give one")
        generator = list(generator)  # diffusers' schedulers take per-sample generators as a list

    force = bool(opts.pop("force", False))
    # Explicit clip_sample / thresholding win over scheduler_config's.
    overrides = dict(opts.pop("scheduler_config", None) or {})
    overrides.update({key: opts.pop(key) for key in ("clip_sample", "thresholding") if key in opts})
    for key, what in (("clip_sample", "clipping"), ("thresholding", "dynamic thresholding")):
        if overrides.get(key):
            _refuse(f"{key}=True", f"{what} of the predicted x0 is nonlinear in eps", force)
            if spec.scheduler is None:
                raise ValueError(f"{key}: sampler {sampler!r} predicts no x0 to clip")
    if opts.pop("guidance_rescale", 0.0):
        _refuse("guidance_rescale", "rescaling the guided eps by its standard deviation is nonlinear in eps", force)
        raise NotImplementedError("guidance_rescale: these samplers have no classifier-free guidance to rescale")

    model = _denoiser(denoiser, opts.pop("stitch", None), schedule)
    before = model.evaluations
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable (n, steps) -> None, got {type(callback).__name__}")
    with torch.no_grad():
        x, times = spec.loop_function()(
            model,
            x_T,
            schedule,
            steps,
            spec=spec,
            generator=generator,
            t_min=t_min,
            overrides=overrides,
            opts=opts,
            callback=callback,
        )
    evaluations = tuple(a - b for a, b in zip(model.evaluations, before))
    costs = model.costs
    top_equivalents = sum(e * c for e, c in zip(evaluations, costs)) / costs[-1] / x_T.shape[0]
    return Samples(
        x=x,
        top_equivalents=top_equivalents,
        evaluations=evaluations,
        costs=costs,
        times=times,
        sampler=sampler,
        steps=len(times),
    )


# ----------------------------------------------------------------------------- continuous-time samplers


def _uniform_grid(schedule: VPSchedule, steps: int, t_min) -> list:
    """steps + 1 times from schedule.t_max down to t_min, uniform (Python floats, the last exactly t_min)."""
    t_max = schedule.t_max
    if not (isinstance(t_min, (int, float)) and 0 < t_min < t_max):
        raise ValueError(f"t_min: expected a time in (0, t_max = {t_max}), got {t_min!r}")
    h = (t_max - t_min) / steps
    return [t_max - n * h for n in range(steps)] + [t_min]


def _brownian_noise(x: torch.Tensor, schedule: VPSchedule, steps: int, generator, t_min: float, noise):
    """The "em" sampler's Brownian increments: ``noise`` (a BrownianPath covering [t_min, t_max]), a
    path drawn from ``generator``, or per-sample increments for a list of generators."""
    t_max = schedule.t_max
    if is_per_sample(generator):
        return _PerSampleIncrements(generator, x)
    if noise is None:
        depth = max(1, math.ceil(math.log2(steps)) + 1)  # grid times in distinct leaves: exact Brownian law
        return BrownianPath(x.shape, t_min, t_max, generator=generator, dtype=x.dtype, device=x.device, depth=depth)
    if not isinstance(noise, BrownianPath):
        raise TypeError(f"noise: expected a BrownianPath, got {type(noise).__name__}")
    if noise.shape != x.shape or noise.t0 > t_min or noise.t1 < t_max:
        raise ValueError(
            f"noise: expected a path of shape {tuple(x.shape)} covering [t_min, t_max] = [{t_min}, {t_max}], "
            f"got shape {tuple(noise.shape)} on [{noise.t0}, {noise.t1}]"
        )
    return noise


def em_loop(
    model,
    x: torch.Tensor,
    schedule: VPSchedule,
    steps: int,
    *,
    spec: SamplerSpec,
    generator,
    t_min: float,
    overrides: dict,
    opts: dict,
    callback: Optional[StepCallback] = None,
):
    """Euler-Maruyama on the reverse SDE, ``steps`` uniform steps from schedule.t_max down to ``t_min``.

    Step n from t to t' = t - h:  x <- x + reverse_sde_drift(x, t, eps, dt=t' - t) + sqrt(beta(t)) (W(t) - W(t')),
    with eps = model(x, t) and W from ``opts["noise"]`` (a BrownianPath), a path drawn from
    ``generator``, or per-sample increments for a list of generators.  ``x``: (batch, ...).
    Returns ``(x_0, times)``: the final state and the evaluation times (float64, (steps,)).
    """
    grid = _uniform_grid(schedule, steps, t_min)
    noise = _brownian_noise(x, schedule, steps, generator, t_min, opts.pop("noise", None))
    for n in range(steps):
        t, t_next = grid[n], grid[n + 1]
        model.set_step(t - t_next, index=n, steps=steps)
        eps = model(x, t)
        dW = noise.increment(t_next, t)
        x = x + schedule.reverse_sde_drift(x, t, eps, dt=t_next - t) + math.sqrt(float(schedule.beta(t))) * dW
        if callback is not None:
            callback(n, steps)
    return x, torch.tensor(grid[:-1], dtype=torch.float64)


def euler_ode_loop(
    model,
    x: torch.Tensor,
    schedule: VPSchedule,
    steps: int,
    *,
    spec: SamplerSpec,
    generator,
    t_min: float,
    overrides: dict,
    opts: dict,
    callback: Optional[StepCallback] = None,
):
    """Euler on the probability-flow ODE, ``steps`` uniform steps from schedule.t_max down to ``t_min``:
    x <- x + probability_flow_drift(x, t, eps, dt=t' - t).  Arguments and result as :func:`em_loop`."""
    grid = _uniform_grid(schedule, steps, t_min)
    for n in range(steps):
        t, t_next = grid[n], grid[n + 1]
        model.set_step(t - t_next, index=n, steps=steps)
        eps = model(x, t)
        x = x + schedule.probability_flow_drift(x, t, eps, dt=t_next - t)
        if callback is not None:
            callback(n, steps)
    return x, torch.tensor(grid[:-1], dtype=torch.float64)


class _PerSampleIncrements:
    """Brownian increments drawn step by step, row b from ``generators[b]`` (exact law on any grid)."""

    def __init__(self, generators, x: torch.Tensor):
        self.generators, self.shape, self.dtype, self.device = generators, tuple(x.shape), x.dtype, x.device

    def increment(self, s: float, t: float) -> torch.Tensor:
        z = randn(self.shape, self.generators, dtype=self.dtype, device=self.device)
        return math.sqrt(t - s) * z


# ----------------------------------------------------------------------------- diffusers-driven samplers


def make_scheduler(sampler: str, schedule: VPSchedule, **overrides):
    """The diffusers scheduler behind ``sampler`` for ``schedule``, with our defaults and ``overrides``.

    Defaults: ``thresholding=False``, ``timestep_spacing="trailing"`` and the sampler's own
    settings from the registry (:attr:`SamplerSpec.scheduler_config <.registry.SamplerSpec>`):
    ``clip_sample=False`` for "ddpm" and "ddim"; ``algorithm_type="dpmsolver++"``,
    ``solver_order=2`` for "dpmpp_2m".
    """
    spec = sampler_spec(sampler)
    cls = spec.scheduler_class()
    for key in overrides:
        if key in _FIXED_KEYS:
            raise ValueError(f"scheduler_config[{key!r}]: not settable here, because {_FIXED_KEYS[key]}")
    config = dict(schedule.diffusers_config(), thresholding=False, timestep_spacing="trailing")
    config.update(spec.scheduler_config)
    accepted = inspect.signature(cls.__init__).parameters
    for key in overrides:
        if key not in accepted:
            raise ValueError(f"scheduler_config[{key!r}]: {cls.__name__} has no such setting")
    config.update(overrides)
    return cls(**config)


def _check_scheduler_noise(noise, x: torch.Tensor) -> None:
    if not isinstance(noise, BrownianPath):
        raise TypeError(f"noise: expected a BrownianPath, got {type(noise).__name__}")
    if noise.shape != x.shape or noise.t1 < 1.0 or noise.t0 <= 0:
        raise ValueError(
            f"noise: expected a path of shape {tuple(x.shape)} covering [t_end, 1] with t_end > 0, "
            f"got shape {tuple(noise.shape)} on [{noise.t0}, {noise.t1}]"
        )


def scheduler_loop(
    model,
    x: torch.Tensor,
    schedule: VPSchedule,
    steps: int,
    *,
    spec: SamplerSpec,
    generator,
    t_min: Optional[float] = None,
    overrides: Optional[dict] = None,
    opts: Optional[dict] = None,
    callback: Optional[StepCallback] = None,
    scheduler=None,
    model_kwargs: Optional[dict] = None,
):
    """Drive the diffusers scheduler of ``spec`` as a diffusers pipeline does: ``set_timesteps(steps)``,
    then per timestep k ``step(eps, k, x, ...)`` with eps = model(x, t_k), t_k = schedule.time(k).

    Args:
        model: the denoiser ``(x, t, **model_kwargs) -> eps`` with ``set_step(h, index=, steps=)``
            (a :class:`MultilevelDenoiser`), or, with ``model_kwargs``, a diffusers-style model
            ``(x, k, **model_kwargs)`` returning ``.sample`` (a :class:`MultilevelModel`: it reads its
            step from the scheduler it was built with) that takes the integer timestep k.
        x: x_T, (batch, ...).
        schedule: the betas (and t_k); ``spec``: the sampler's registry entry.
        generator: the scheduler's variance noise (a list: one per sample).
        overrides: extra scheduler settings (``make_scheduler``); ``opts``: "eta" (DDIM) and
            "noise" (a BrownianPath covering [t_end, 1] whose increments become the variance noise).
        scheduler: a scheduler already built by ``make_scheduler`` (``overrides`` then unused).
        model_kwargs: keyword arguments of every model call (conditioning rows), which also
            switches to diffusers-style calls.
        callback: ``callback(n, N)`` after every step.

    Returns ``(x_0, times)``: the clean sample and the evaluation times t_k (float64, (N,)).
    """
    opts = {} if opts is None else opts
    if scheduler is None:
        scheduler = make_scheduler(spec.name, schedule, **(overrides or {}))
    accepted = inspect.signature(scheduler.step).parameters
    # UniPC's step draws no noise and takes no generator
    step_kwargs = {"generator": generator} if "generator" in accepted else {}
    if "eta" in spec.options:
        eta = float(opts.pop("eta", 0.0))
        if not (math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta: expected a number >= 0, got {eta}")
        step_kwargs["eta"] = eta
    noise = opts.pop("noise", None)
    if noise is not None:
        _check_scheduler_noise(noise, x)
    scheduler.set_timesteps(steps, device=x.device)
    timesteps = scheduler.timesteps
    T = int(scheduler.config.num_train_timesteps)
    if spec.scheduler == "DDIMScheduler" and T % steps and scheduler.config.timestep_spacing == "trailing":
        # DDIMScheduler.step goes from timestep k to k - T // N, but "trailing" places the calls T / N apart:
        # each step then ends short of the next call's time (measured on the digits ladder: the error
        # against DDIM-500 grows from 0.40 at 32 steps to 1.23 at 128).
        warnings.warn(
            f"steps: {steps} does not divide num_train_timesteps = {T}, so DDIM steps off its "
            f"own grid (diffusers' DDIMScheduler steps by T // N); use a divisor of {T} or "
            "scheduler_config={'timestep_spacing': 'leading'}",
            stacklevel=3,
        )
    times = schedule.time(timesteps.cpu()).tolist() + [0.0]  # the last step lands on the clean sample
    N = len(timesteps)
    for n, k in enumerate(timesteps):
        if model_kwargs is None:
            model.set_step(times[n] - times[n + 1], index=n, steps=N)
            eps = model(x, times[n])
        else:
            eps = model_output(model(scheduler.scale_model_input(x, k), k, **model_kwargs))
        if noise is not None:
            t, t_next = min(times[n], noise.t1), max(times[n + 1], noise.t0)
            z = noise.increment(t_next, t) / math.sqrt(t - t_next) if t > t_next else torch.zeros_like(x)
            step_kwargs["variance_noise"] = z.to(x.dtype)
        x = scheduler.step(eps, k, x, **step_kwargs).prev_sample
        if callback is not None:
            callback(n, N)
    return x, torch.tensor(times[:-1], dtype=torch.float64)

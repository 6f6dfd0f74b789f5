"""``MultilevelModel``: a ladder of a user's own denoisers as one drop-in model for stock pipelines.

A diffusers pipeline calls its denoiser once per scheduler call::

    out = pipe.unet(latents, t, encoder_hidden_states=..., added_cond_kwargs=..., return_dict=False)[0]
    out = pipe.transformer(latents, timestep=t, class_labels=...).sample

Every common scheduler step is affine in that output given the past (docs/method.md, "Samplers and schedulers"), so
replacing the top model's output by the randomized telescoping estimate

    F = f^1 + sum_{l=2..K} (B_l / p_l) (f^l - f^{l-1}),   B_l ~ Bernoulli(p_l),

with every f^l the raw output of the l-th model on the same inputs (eps, v, x0 or flow
velocity alike, learned-variance channels included), keeps each step unbiased for the top
model.  :class:`MultilevelModel` computes F with the engine's estimator
(:func:`~multilevel_em.engine.telescoping_estimate`: each needed level once per call, only on
the rows that need it) and slices every per-row input (conditioning) with those rows::

    from multilevel_em.diffusion import MultilevelModel

    pipe.unet = MultilevelModel([tiny_unet, small_unet, pipe.unet], scheduler=pipe.scheduler)
    cal = pipe.unet.calibrate(lambda: pipe(prompt, num_inference_steps=25, output_type="latent"))
    pipe.unet.plan(budget=8)          # top-level equivalents per image, for this scheduler's calls
    images = pipe(prompt, num_inference_steps=25).images
    pipe.unet.report()                # evaluations per level, top-level equivalents per image

Times.  A call's time is t = (timestep + 1) / num_train_timesteps in [0, 1] (the convention
of :meth:`VPSchedule.time <multilevel_em.diffusion.VPSchedule.time>`; for flow-matching
schedulers, whose timesteps are sigma x 1000, t = sigma + 1/1000).  With ``rates`` (per unit
of t), call n gets p_l = min(1, lambda_l(t_n) span_n), where span_n is the time from t_n down
to the next smaller time of the scheduler's grid (0 after the last), divided by the number of
calls the scheduler makes at t_n.  Schedulers that call the model several times per step
(Heun: ``timesteps`` repeats every interior time; KDPM2 and DPM-Solver singlestep interleave
extra times) thus spread a step's rate over its calls: the expected number of corrections per
unit time stays lambda and every call stays unbiased (p > 0 where lambda > 0), but the
variance a correction adds is weighted by that stage's coefficient in the step, so a plan is
only approximate there.

Guidance.  Classifier-free guidance doubles the batch ([uncond; cond], identical latents) and
combines the two halves affinely, so the estimate stays unbiased for the guided top model.
By default (``pair_guidance="auto"``) a batch is treated as guidance pairs when it looks like
what a guided pipeline passes: its two halves have identical latents *and* differ in some
per-row conditioning (prompt embeddings, class labels, ...); then both copies of an image share
their level draws, so the guidance difference is taken at the same levels.  A list of
per-image generators settles it: one per row means no pairs, one per pair means pairs.  So
copies of one latent with the same (or no) conditioning, e.g. a variance study, draw row by
row; copies of one latent with different prompts and no guidance are still taken for pairs
(each row stays unbiased; only the two halves' draws are shared): pass
``pair_guidance=False`` there.  Guidance rescale (``guidance_rescale > 0``), dynamic
thresholding and x0 clipping are nonlinear in the output: with them the estimate is no
longer unbiased for the top model's step (it stays close when the probabilities are high).
A learned variance used nonlinearly by a scheduler (DDPM ``variance_type="learned_range"``)
is biased in the same way; its mean channels are not.

What a level may do.  A level reads its inputs (the sample, the timestep, the conditioning) and
returns a new output; it must not modify them in place: the levels of a call share the
pipeline's tensors (the latents among them).  A level that does is named in a ``ValueError``
(detected through the tensors' version counters; not for inference tensors, made under
``torch.inference_mode``).  The levels must return one output shape, dtype and device.

Gradients.  The estimate is a differentiable function of the levels' outputs: with a sample
that requires grad (gradient-based guidance), the output carries the gradients of the levels
that ran, as the wrapped models' outputs would.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from numbers import Real
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .._fit import loglog_slope
from ..calibration import Calibration, CallPlan
from ..calibration.model import ScheduleCalibration
from ..calibration.schedules import PipelineMeasurements, SchedulePlan, plan_schedules
from ..engine import (
    Ladder,
    LevelEvaluator,
    check_rates,
    firing_probabilities,
    modified_input_error,
    telescoping_estimate,
    tensor_version,
)
from ..engine.buckets import bucket_sizes
from ..engine.call_schedule import CallSchedule, schedule_estimate
from ..engine.compiled import CompiledLevel, check_compile_buckets
from ..engine.random import check_generators, is_per_sample
from ..engine.solver import check_buckets
from .outputs import model_output, single_time
from .pipeline_calibration import calibrate_pipeline, output_features, score_distribution, takes_steps

__all__ = ["MultilevelModel", "scheduler_spans"]

_PAIRING = ("auto", True, False)


# ----------------------------------------------------------------------------- times and spans


def _num_train_timesteps(scheduler) -> int:
    config = getattr(scheduler, "config", None)
    T = getattr(config, "num_train_timesteps", None) if config is not None else None
    if T is None:
        T = getattr(scheduler, "num_train_timesteps", None)
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(
            f"scheduler: expected a diffusers scheduler with config.num_train_timesteps, got {type(scheduler).__name__}"
        )
    return T


def _time(timestep: float, T: int) -> float:
    return (float(timestep) + 1.0) / T


def _key(timestep: float) -> float:
    return round(float(timestep), 4)


def scheduler_spans(scheduler) -> Dict[float, Tuple[float, float]]:
    """For each timestep of ``scheduler.timesteps``: (its time t, the span of time one call there stands for).

    t = (timestep + 1) / num_train_timesteps; the span of time t_i is (t_i - t_{i+1}) / m_i, with
    t_{i+1} the next smaller distinct time of the grid (0 after the last) and m_i the number of
    times t_i occurs in ``timesteps`` (one call each).  Keys are the timesteps rounded to 1e-4.
    """
    T = _num_train_timesteps(scheduler)
    values = _timestep_values(scheduler)
    counts: Dict[float, int] = {}
    for v in values:
        counts[_key(v)] = counts.get(_key(v), 0) + 1
    distinct = sorted(counts, reverse=True)
    out = {}
    for i, k in enumerate(distinct):
        t = _time(k, T)
        t_next = _time(distinct[i + 1], T) if i + 1 < len(distinct) else 0.0
        out[k] = (t, (t - t_next) / counts[k])
    return out


def _timestep_values(scheduler) -> List[float]:
    """``scheduler.timesteps`` as floats; ValueError saying what is wrong when they are unset (None, empty, as
    PNDMScheduler's before ``set_timesteps``) or not a sequence of finite numbers."""
    ts = getattr(scheduler, "timesteps", None)
    name = type(scheduler).__name__
    if ts is None or (hasattr(ts, "__len__") and not isinstance(ts, (str, bytes)) and len(ts) == 0):
        raise ValueError(
            f"scheduler: the timesteps of {name} are not set; the pipeline calls scheduler.set_timesteps(steps) "
            "before the first model call (call it yourself when you use the model directly)"
        )
    try:
        if isinstance(ts, (str, bytes)):
            raise TypeError
        values = [float(v) for v in (ts.tolist() if isinstance(ts, (torch.Tensor, np.ndarray)) else list(ts))]
    except (TypeError, ValueError):
        raise ValueError(
            f"scheduler: {name}.timesteps is {ts!r:.60}, not a sequence of numbers; expected a diffusers scheduler "
            "after set_timesteps(steps)"
        ) from None
    if not all(np.isfinite(values)):
        raise ValueError(f"scheduler: {name}.timesteps holds NaN or Inf")
    return values


def _warn_nonlinear(scheduler) -> None:
    """Warn when a scheduler's step is not affine in the model output (the estimate is then biased)."""
    config = getattr(scheduler, "config", None)
    if config is None:
        return
    on = [k for k in ("clip_sample", "thresholding") if bool(getattr(config, k, False))]
    if on:
        warnings.warn(
            f"scheduler: {' and '.join(on)} is on; that step is not affine in the model output, so the multilevel "
            "estimate is no longer unbiased for the top model's step (set it off in the scheduler's config for exact "
            "unbiasedness)",
            stacklevel=3,
        )


def _single_timestep(timestep, batch: int) -> float:
    return single_time(
        timestep,
        name="timestep",
        why="MultilevelModel draws its levels for one timestep per call; "
        f"got different timesteps in one batch of {batch}",
    )


# ----------------------------------------------------------------------------- per-row inputs


def _gather(value, name: str, batch: int, rows: Optional[torch.Tensor]):
    """``value`` with its batch rows selected: tensors whose first dimension is ``batch`` (inside
    dicts, lists and tuples too); tensors of first dimension 1, 0-dim tensors and non-tensors pass."""
    if isinstance(value, torch.Tensor):
        if value.ndim == 0 or value.shape[0] == 1 and batch != 1:
            return value
        if value.shape[0] != batch:
            raise ValueError(
                f"{name}: first dimension {value.shape[0]} matches neither the batch ({batch}) nor 1; "
                "MultilevelModel slices per-row inputs with the rows that run a level, so it must know which "
                "rows a tensor belongs to"
            )
        return value if rows is None else value.index_select(0, rows)
    if isinstance(value, dict):
        return {k: _gather(v, f"{name}[{k!r}]", batch, rows) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not isinstance(value, str):
        out = [_gather(v, f"{name}[{i}]", batch, rows) for i, v in enumerate(value)]
        return type(value)(out) if isinstance(value, tuple) and type(value) is tuple else out
    return value


def _tensors(value, name: str) -> List[Tuple[str, torch.Tensor]]:
    """The tensors inside ``value`` (dicts, lists and tuples too), each with its name for messages."""
    if isinstance(value, torch.Tensor):
        return [(name, value)]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _tensors(v, f"{name}[{k!r}]")]
    if isinstance(value, (list, tuple)):
        return [t for i, v in enumerate(value) for t in _tensors(v, f"{name}[{i}]")]
    return []


def _halves_differ(value, batch: int) -> bool:
    """Whether some per-row tensor in ``value`` (first dimension ``batch``) differs between its two halves: what
    classifier-free guidance passes (the unconditional and the conditional rows)."""
    half = batch // 2
    for _, v in _tensors(value, ""):
        if v.ndim >= 1 and v.shape[0] == batch and not torch.equal(v[:half], v[half:]):
            return True
    return False


def _model_list(models) -> list:
    """``models`` as a list: a list, tuple, ``torch.nn.ModuleList``, generator or other iterable of denoisers."""
    if isinstance(models, torch.nn.ModuleList):
        return list(models)
    if isinstance(models, (torch.nn.Module, torch.Tensor, str, bytes)) or callable(models):
        raise TypeError(
            f"models: expected a list of denoisers, cheapest first, got a single {type(models).__name__}; "
            "wrap it as [model]"
        )
    if isinstance(models, dict):
        raise TypeError("models: expected a list of denoisers, cheapest first, got a dict; pass list(d.values())")
    try:
        return list(models)
    except TypeError:
        raise TypeError(f"models: expected a list of denoisers, cheapest first, got {type(models).__name__}") from None


class _CallableModule(torch.nn.Module):
    """A plain callable held as a module (so that MultilevelModel is a Module over its levels)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


class _Call:
    """One forward call: the inputs, how rows map to images, and each level run on a set of images."""

    def __init__(self, models, names, sample, timestep, args, kwargs, groups: int, tau: float):
        self.models, self.names = models, names
        self.tau = tau
        self.rows_total = sample.shape[0]
        self.groups = groups
        self.images = self.rows_total // groups
        self.sample, self.timestep, self.args, self.kwargs = sample, timestep, args, kwargs
        self.output_type = None
        # The estimator's state: (images, groups, *sample_shape); image i's rows are i + g * images.
        self.state = sample.reshape(groups, self.images, *sample.shape[1:]).transpose(0, 1)

    def model_rows(self, images: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if images is None:
            return None
        if self.groups == 1:
            return images
        return torch.cat([images + g * self.images for g in range(self.groups)])

    def run(self, j: int, state: torch.Tensor, images: Optional[torch.Tensor]) -> torch.Tensor:
        """Level j on the images ``images`` (None: all) whose states are ``state`` (m, groups, ...);
        returns its raw output as (m, groups, *out_shape)."""
        m = state.shape[0]
        x = state.transpose(0, 1).reshape(self.groups * m, *state.shape[2:])
        rows = self.model_rows(images)
        n = self.rows_total
        timestep = _gather(self.timestep, "timestep", n, rows)
        args = _gather(self.args, "args", n, rows)
        kwargs = {k: _gather(v, k, n, rows) for k, v in self.kwargs.items()}
        watched = [("sample", x)] + _tensors(timestep, "timestep") + _tensors(args, "args")
        watched += [t for k, v in kwargs.items() for t in _tensors(v, repr(k))]
        versions = [tensor_version(t) for _, t in watched]
        result = self.models[j](x, timestep, *args, **kwargs)
        for (what, t), v in zip(watched, versions):
            if v is not None and t._version != v:
                raise modified_input_error(f"level {j + 1} ({self.names[j]})", what, f"timestep {self.tau:g}")
        if not isinstance(result, (torch.Tensor, tuple, list)) and hasattr(result, "sample"):
            self.output_type = type(result)  # a diffusers output class: the estimate is returned in one
        out = model_output(result, f"level {j + 1} ({self.names[j]})")
        if out.ndim < 1 or out.shape[0] != x.shape[0]:
            raise ValueError(
                f"level {j + 1} ({self.names[j]}): output of shape {tuple(out.shape)} for {x.shape[0]} input rows"
            )
        return out.reshape(self.groups, m, *out.shape[1:]).transpose(0, 1)

    def unstate(self, est: torch.Tensor) -> torch.Tensor:
        """(images, groups, *out_shape) -> (rows, *out_shape), rows in the pipeline's order."""
        return est.transpose(0, 1).reshape(self.rows_total, *est.shape[2:])


class _RowEvaluator(LevelEvaluator):
    """The engine's evaluator, running levels through a :class:`_Call` (conditioning sliced by row)."""

    def __init__(self, ladder: Ladder, call: _Call, out_shape: Tuple[int, ...], out_like: tuple):
        super().__init__(ladder, call.state)
        self._call_ = call
        self._out_shape = out_shape
        self._out_like = out_like  # (dtype, device) of the levels' outputs, from the first call

    def evaluate(self, j, x, t, rows):
        return self._call_.run(j, x, rows)

    def check_output(self, j, x, out) -> None:
        want = (x.shape[0], x.shape[1], *self._out_shape)
        if tuple(out.shape) != want:
            raise ValueError(
                f"level {j + 1} ({self.ladder.names[j]}): output per row {tuple(out.shape[2:])} differs from the other "
                f"levels' {self._out_shape}"
            )
        if (out.dtype, out.device) != self._out_like:
            raise TypeError(
                f"level {j + 1} ({self.ladder.names[j]}): output dtype/device {out.dtype}/{out.device} differs from "
                f"the levels' {self._out_like[0]}/{self._out_like[1]} (at the first call); the levels must return one "
                "dtype on one device"
            )


# ----------------------------------------------------------------------------- the model


class MultilevelModel(torch.nn.Module):
    """K denoisers of one family, cheapest first, used as one: the randomized telescoping estimate of the top one.

    ``model(sample, timestep, *args, **kwargs)`` takes exactly what the top model takes and
    returns what it returns (a diffusers output with ``.sample``, or ``(sample,)`` with
    ``return_dict=False``), holding f^1 + sum_l (B_l / p_l)(f^l - f^{l-1}) evaluated on the
    same inputs (module docstring).  ``config``, ``dtype`` and ``device`` are the top model's,
    and other attributes fall through to it, so ``pipe.unet = MultilevelModel([...])`` or
    ``pipe.transformer = MultilevelModel([...])`` runs a stock pipeline unchanged.

    Args:
        models: the denoisers, cheapest first (a list, tuple, ``torch.nn.ModuleList`` or other
            iterable): diffusers models of one class (``UNet2DModel``,
            ``UNet2DConditionModel``, ``DiTTransformer2DModel``, ...; their configs must agree
            on channels, ``sample_size`` and ``patch_size``) or callables with the same
            signature. They must not modify their inputs in place (module docstring).
        costs: cost of one row's evaluation per model (any unit, nondecreasing); default:
            FLOPs per row counted on the first call (with its conditioning) by
            ``torch.utils.flop_counter``, which must rise along the ladder.
        probabilities: p_2..p_K per call (a sequence, or a 1-d tensor or array): numbers in
            [0, 1] or callables of the timestep (the value the pipeline passes, e.g. 981.0);
            ``rates`` take the same containers. p = 1 runs both levels of that
            correction at every call; all ones give the top model's output exactly (up to
            float rounding of the telescoping sum).
        rates: instead of probabilities: lambda_2..lambda_K per unit of t (numbers or
            callables of t; a plan's or a :class:`~multilevel_em.Calibration`'s ``rates``),
            with ``scheduler``: p = min(1, lambda(t) span) (module docstring).
        schedule: instead of probabilities or rates: a :class:`~multilevel_em.engine.CallSchedule` (which levels
            each of the pipeline's model calls uses and how often each correction fires; the top model alone,
            a deterministic switch such as T-Stitch's, ML-EM and hybrids are all schedules), with ``scheduler``:
            call n is the call at ``scheduler.timesteps[n]``, so the schedule must have one entry per timestep.
        scheduler: the pipeline's scheduler (``pipe.scheduler``): needed by ``rates``, ``schedule``,
            :meth:`calibrate` and :meth:`plan`. Replacing ``pipe.scheduler`` later needs
            ``model.scheduler = pipe.scheduler`` too.
        draws: ``"per_sample"`` (each image draws its own B's; a level runs only on the
            images whose draw needs it), ``"shared"`` (one draw per call for the batch) or ``"static"``
            (per-image draws made on the host, so every level call's batch size is known before it runs:
            image b fires correction l with probability exactly p_l, independently of the other images and
            levels, weighted 1 / p_l; both copies of a guidance pair share their draws, as with per-image
            draws; each level runs on a sub-batch of images padded to a bucket size, see
            :func:`multilevel_em.solve`).  A call then reads nothing back from the device when the timestep
            is a number or a CPU tensor, ``pair_guidance`` is True or False (``"auto"`` compares the halves)
            and ``check_finite=False``.
        buckets: ``draws="static"`` only: the sub-batch sizes in images (ints >= 1); default the powers of
            two below the batch of images (at most 7) and that batch (:func:`~multilevel_em.engine.bucket_sizes`).
        compile: run every model through ``torch.compile`` (``dynamic=False``, one code object per level; on
            CUDA ``mode="reduce-overhead"``, CUDA graphs): needs ``draws="static"`` (or ``"shared"``) for K > 1, so
            that each model sees only the bucket sizes (times the guidance groups) and compiles each once. A
            timestep given as a Python number is passed to the models as a 0-dim tensor (a number would be
            specialised into the graph and recompile at every timestep).
        generator: the level draws' randomness: None (torch's global generator), a
            ``torch.Generator``, or a list with one generator per image (diffusers'
            convention; ``draws="per_sample"`` or ``"static"``): image b's draws then come from
            ``generator[b]`` alone. ``"static"`` draws on the host: CPU generators only. Settable between
            pipeline calls (``model.generator = ...``).
        pair_guidance: ``"auto"`` (default): a batch whose two halves have identical latents and
            differ in their per-row conditioning (what classifier-free guidance passes) shares
            its draws between the halves (module docstring; a list of generators with one per
            row or one per pair decides it); ``True``: always pair the halves (even batch
            required); ``False``: every row draws alone.
        names: level names for messages (default: the models' class names).
        prediction_types: optional, one per model ("epsilon", "v_prediction", "sample",
            "flow"): refused if they disagree. Models whose ``config`` has a
            ``prediction_type`` are checked too.
        check_finite: raise ``FloatingPointError`` naming the level that produced NaN or Inf.

    Attributes:
        evaluations: rows evaluated per level since construction or :meth:`reset`.
        calls, rows: forward calls and rows (batch entries) seen since then.
        costs: the levels' costs (None until the first call when measured).
        calibration, call_plan: set by :meth:`calibrate` and :meth:`plan`.
    """

    def __init__(
        self,
        models: Sequence,
        *,
        costs: Optional[Sequence[float]] = None,
        probabilities: Optional[Sequence] = None,
        rates: Optional[Sequence] = None,
        schedule: Optional[CallSchedule] = None,
        scheduler=None,
        draws: str = "per_sample",
        generator=None,
        pair_guidance="auto",
        names: Optional[Sequence[str]] = None,
        prediction_types: Optional[Sequence[str]] = None,
        check_finite: bool = True,
        buckets: Optional[Sequence[int]] = None,
        compile: bool = False,
    ):
        super().__init__()
        models = _model_list(models)
        if len(models) < 1:
            raise ValueError("models: expected at least one denoiser")
        for j, m in enumerate(models):
            if not callable(m):
                raise TypeError(f"models[{j}]: expected a denoiser (callable), got {type(m).__name__}")
        K = len(models)
        if names is None:
            names = [type(m).__name__ for m in models]
        names = [str(n) for n in names]
        if len(names) != K:
            raise ValueError(f"names: expected {K} names, got {len(names)}")
        self.names = names
        self._check_family(models)
        self._check_prediction_types(models, prediction_types)
        self.models = torch.nn.ModuleList(m if isinstance(m, torch.nn.Module) else _CallableModule(m) for m in models)
        if costs is not None:
            costs = self._checked_costs(costs)
        self.costs: Optional[Tuple[float, ...]] = costs
        if draws not in ("per_sample", "shared", "static"):
            raise ValueError(f"draws: expected 'per_sample', 'shared' or 'static', got {draws!r}")
        self.draws = draws
        self.buckets = check_buckets(buckets, draws)
        if not isinstance(compile, bool):
            raise TypeError(f"compile: expected a bool, got {compile!r}")
        if compile and K > 1 and draws not in ("static", "shared"):
            raise ValueError(
                f"compile: a compiled model needs a few fixed batch sizes, but draws={draws!r} gives every call its "
                "own sub-batch sizes (a recompilation each); use draws='static' (or 'shared')"
            )
        self.compile_levels = compile
        # what a call runs: the models, or each through torch.compile (a plain list: not registered as modules)
        self._levels = (
            [CompiledLevel(m, f"level_{j + 1}_{names[j]}") for j, m in enumerate(self.models)] if compile else None
        )
        if pair_guidance not in _PAIRING:
            raise ValueError(f"pair_guidance: expected 'auto', True or False, got {pair_guidance!r}")
        self.pair_guidance = pair_guidance
        self.scheduler = scheduler
        _warn_nonlinear(scheduler)
        self.generator = generator
        self.check_finite = bool(check_finite)
        self.probabilities = None
        self.rates = None
        self.schedule: Optional[CallSchedule] = None
        if sum(v is not None for v in (probabilities, rates, schedule)) > 1:
            raise ValueError("give at most one of probabilities=, rates= and schedule=")
        if probabilities is not None:
            self.set_probabilities(probabilities)
        if rates is not None:
            self.set_rates(rates)
        if schedule is not None:
            self.set_schedule(schedule)
        self.calibration: Optional[Calibration] = None
        self.call_plan: Optional[CallPlan] = None
        self._call_grid: Optional[Tuple[List[float], List[float]]] = None
        self._recording: Optional[list] = None
        self._forward_hook: Optional[Callable] = None  # calibration runs: est = hook(evaluator, call, tau)
        self.pipeline_measurements: Optional[PipelineMeasurements] = None
        self._pipeline: Optional[tuple] = None  # (run, features, reference features) of calibrate(run(n))
        self.schedule_plan: Optional[SchedulePlan] = None
        self._out_shape: Optional[Tuple[int, ...]] = None
        self._out_like: Optional[tuple] = None
        self._spans_cache: Optional[tuple] = None  # (scheduler.timesteps, their spans)
        self._index_cache: Optional[tuple] = None  # (scheduler.timesteps, {timestep key: call index})
        self.reset()

    # ------------------------------------------------------------------ checks

    @staticmethod
    def _check_family(models) -> None:
        modules = [(j, m) for j, m in enumerate(models) if isinstance(m, torch.nn.Module)]
        if not modules:
            return
        j0, m0 = modules[0]
        for j, m in modules[1:]:
            if type(m) is not type(m0):
                raise TypeError(
                    f"models: level {j + 1} is a {type(m).__name__} but level {j0 + 1} is a {type(m0).__name__}; "
                    "a ladder's models must be of one family (same class, same inputs and outputs)"
                )
        configs = [(j, getattr(m, "config", None)) for j, m in modules]
        # sample_size: a pipeline sizes its latents from the top model's (DiTPipeline always; Stable Diffusion by
        # default), and a patch-based model (DiT) built for another size runs on them without a word
        for key in ("in_channels", "out_channels", "sample_size", "patch_size"):
            vals = [
                (j, c.get(key) if hasattr(c, "get") else getattr(c, key, None)) for j, c in configs if c is not None
            ]
            vals = [(j, tuple(v) if isinstance(v, list) else v) for j, v in vals if v is not None]
            if len({v for _, v in vals}) > 1:
                why = (
                    "; the pipeline makes latents of the top model's size, and every level must be built for it"
                    if key in ("sample_size", "patch_size")
                    else ""
                )
                raise ValueError(
                    f"models: config.{key} differs between levels ("
                    + ", ".join(f"level {j + 1}: {v}" for j, v in vals)
                    + ")"
                    + why
                )

    @staticmethod
    def _check_prediction_types(models, prediction_types) -> None:
        found = []
        for j, m in enumerate(models):
            c = getattr(m, "config", None)
            v = (c.get("prediction_type") if hasattr(c, "get") else getattr(c, "prediction_type", None)) if c else None
            if v is not None:
                found.append((j, str(v)))
        if prediction_types is not None:
            prediction_types = [str(p) for p in prediction_types]
            if len(prediction_types) != len(models):
                raise ValueError(
                    f"prediction_types: expected {len(models)} (one per model), got {len(prediction_types)}"
                )
            found += list(enumerate(prediction_types))
        if len({v for _, v in found}) > 1:
            raise ValueError(
                "prediction types disagree ("
                + ", ".join(f"level {j + 1}: {v}" for j, v in found)
                + "); the estimate combines raw outputs, so every level must predict the same quantity"
            )

    def _checked_costs(self, costs) -> Tuple[float, ...]:
        try:
            costs = tuple(float(c) for c in costs)
        except (TypeError, ValueError):
            raise TypeError(f"costs: expected {len(self.models)} numbers, got {costs!r}") from None
        if len(costs) != len(self.models):
            raise ValueError(f"costs: expected {len(self.models)} costs (one per model), got {len(costs)}")
        Ladder([lambda x, t: x] * len(costs), costs, self.names)  # the engine's checks: positive, nondecreasing
        return costs

    # ------------------------------------------------------------------ probabilities

    def set_probabilities(self, probabilities: Sequence) -> None:
        """Per-call p_2..p_K: numbers in [0, 1] or callables of the timestep (replaces rates)."""
        probabilities = self._sequence("probabilities", probabilities)
        for j, p in enumerate(probabilities):
            if not callable(p):
                self._probability(j, p, None)
        self.probabilities, self.rates, self.schedule = probabilities, None, None

    def set_rates(self, rates: Sequence) -> None:
        """lambda_2..lambda_K per unit of t: numbers >= 0 or callables of t (replaces probabilities)."""
        rates = check_rates(self._sequence("rates", rates), len(self.models), None)
        self.probabilities, self.rates, self.schedule = None, rates, None

    def set_schedule(self, schedule: CallSchedule) -> None:
        """Run ``schedule`` (a :class:`~multilevel_em.engine.CallSchedule` for this ladder; replaces probabilities
        and rates): call n of a pipeline run, the one at ``scheduler.timesteps[n]``, uses the sub-ladder and
        probabilities of the schedule's call n."""
        if not isinstance(schedule, CallSchedule):
            raise TypeError(f"schedule: expected a CallSchedule, got {type(schedule).__name__}")
        schedule.check_ladder(len(self.models))
        self.probabilities, self.rates, self.schedule = None, None, schedule

    def call_grid(self, calls: int) -> Tuple[List[float], List[float]]:
        """(times, spans) of the calls the scheduler makes with ``calls`` inference steps, in call order (set on a
        copy: the pipeline's scheduler is not touched)."""
        if self.scheduler is None:
            self._spans()  # fails, saying why
        sch = copy.deepcopy(self.scheduler)
        sch.set_timesteps(int(calls))
        table = scheduler_spans(sch)
        grid = [table[_key(float(v))] for v in sch.timesteps]
        return [t for t, _ in grid], [span for _, span in grid]

    def call_index(self, timestep: float) -> int:
        """The 0-based position of a call at ``timestep`` in the scheduler's timesteps (what a schedule's call
        n refers to); refuses schedulers that call the model twice per timestep (Heun, KDPM2)."""
        self._spans()  # the scheduler is set and its timesteps are numbers
        ts = self.scheduler.timesteps
        cache = self._index_cache
        if cache is None or cache[0] is not ts:
            keys = [_key(float(v)) for v in ts]
            if len(set(keys)) != len(keys):
                raise ValueError(
                    "schedule: this scheduler calls the model more than once per timestep (a second-order "
                    f"scheduler such as {type(self.scheduler).__name__}); schedules need one call per timestep"
                )
            cache = self._index_cache = (ts, {k: n for n, k in enumerate(keys)})
        k = _key(timestep)
        if k not in cache[1]:
            raise ValueError(
                f"timestep {timestep:g} is not in the scheduler's timesteps ({len(cache[1])} of them); pass the "
                "scheduler the pipeline uses (model.scheduler = pipe.scheduler)"
            )
        return cache[1][k]

    def _sequence(self, name: str, values) -> list:
        K = len(self.models)
        one = TypeError(f"{name}: expected a sequence of {K - 1} values (levels 2..{K}), got one value")
        if isinstance(values, (torch.Tensor, np.ndarray)):  # a 1-d tensor or array of numbers is a sequence
            if values.ndim == 0:
                raise one
            if values.ndim != 1:
                raise ValueError(
                    f"{name}: expected {K - 1} values (levels 2..{K}), got an array of shape {tuple(values.shape)}"
                )
            values = values.tolist()
        if isinstance(values, (Real, str, bytes)) or callable(values):
            raise one
        try:
            values = list(values)
        except TypeError:
            raise TypeError(
                f"{name}: expected a sequence of {K - 1} values (levels 2..{K}), got {type(values).__name__}"
            ) from None
        if len(values) != K - 1:
            raise ValueError(f"{name}: expected {K - 1} values (one for each of levels 2..{K}), got {len(values)}")
        return values

    @staticmethod
    def _probability(j: int, p, timestep) -> float:
        try:
            p = float(p)
        except (TypeError, ValueError):
            raise TypeError(f"probabilities[{j}] (level {j + 2}): expected a number, got {type(p).__name__}") from None
        if not 0.0 <= p <= 1.0:
            at = "" if timestep is None else f" at timestep {timestep:g}"
            raise ValueError(f"probabilities[{j}] (level {j + 2}): expected a probability in [0, 1], got {p}{at}")
        return p

    def _spans(self) -> Dict[float, Tuple[float, float]]:
        if self.scheduler is None:
            raise ValueError(
                "scheduler: rates, calibrate() and plan() need the pipeline's scheduler "
                "(MultilevelModel(..., scheduler=pipe.scheduler))"
            )
        ts = getattr(self.scheduler, "timesteps", None)
        if self._spans_cache is None or self._spans_cache[0] is not ts:
            self._spans_cache = (ts, scheduler_spans(self.scheduler))  # raises, saying why, on unset timesteps
        return self._spans_cache[1]

    def time_and_span(self, timestep: float) -> Tuple[float, float]:
        """(t, span) of a call at ``timestep`` on the scheduler's current grid (module docstring)."""
        table = self._spans()
        k = _key(timestep)
        if k not in table:
            raise ValueError(
                f"timestep {timestep:g} is not in the scheduler's timesteps ({len(table)} of them); pass the "
                "scheduler the pipeline uses (model.scheduler = pipe.scheduler)"
            )
        return table[k]

    def probabilities_at(self, timestep: float) -> List[float]:
        """p_2..p_K for a call at ``timestep``."""
        if self.probabilities is not None:
            return [
                self._probability(j, p(timestep) if callable(p) else p, timestep)
                for j, p in enumerate(self.probabilities)
            ]
        if self.rates is not None:
            t, span = self.time_and_span(timestep)
            return firing_probabilities(self.rates, t, span)
        if len(self.models) == 1:
            return []
        raise ValueError(
            "probabilities: not set; pass probabilities= or rates= (with scheduler=), or run calibrate() and plan()"
        )

    # ------------------------------------------------------------------ what pipelines read

    @property
    def top(self) -> torch.nn.Module:
        """The most expensive model (whose output the estimate is unbiased for)."""
        return self.models[-1]

    @property
    def config(self):
        return self.top.config

    @property
    def dtype(self) -> torch.dtype:
        d = getattr(self.top, "dtype", None)
        if isinstance(d, torch.dtype):
            return d
        return next(self.top.parameters()).dtype

    @property
    def device(self) -> torch.device:
        d = getattr(self.top, "device", None)
        if isinstance(d, torch.device):
            return d
        return next(self.top.parameters()).device

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            models = self.__dict__.get("_modules", {}).get("models")
            if models is None or name.startswith("__"):
                raise
            return getattr(models[-1], name)

    # ------------------------------------------------------------------ accounting

    def reset(self) -> None:
        """Zero the counters (evaluations, calls, rows)."""
        self.evaluations = [0] * len(self.models)
        self.calls = 0
        self.rows = 0

    @property
    def total_cost(self) -> float:
        """Running total of the cost spent since :meth:`reset`, sum_l evaluations_l costs_l (the costs' unit,
        all rows of all calls together)."""
        if self.costs is None:
            return 0.0
        return float(sum(e * c for e, c in zip(self.evaluations, self.costs)))

    @property
    def cost(self) -> float:
        """Deprecated: :attr:`total_cost` (the running total since :meth:`reset`)."""
        warnings.warn(
            "MultilevelModel.cost is deprecated; read .total_cost (the running total since reset)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.total_cost

    def report(self) -> dict:
        """Cost since :meth:`reset` (call it after a pipeline call): per level and per image.

        ``top_equivalents_per_image`` is the cost divided by what the top model alone costs for
        one call of the same batch: a stock pipeline with N calls of the top model gives N.
        """
        rows_per_call = self.rows / self.calls if self.calls else 0.0
        levels = []
        for j, e in enumerate(self.evaluations):
            levels.append(
                {
                    "level": j + 1,
                    "name": self.names[j],
                    "cost": None if self.costs is None else self.costs[j],
                    "evaluations": e,
                    "evaluations_per_image": e / rows_per_call if rows_per_call else 0.0,
                }
            )
        te = self.total_cost / (self.costs[-1] * rows_per_call) if self.costs and rows_per_call else 0.0
        return {"calls": self.calls, "rows_per_call": rows_per_call, "levels": levels, "top_equivalents_per_image": te}

    # ------------------------------------------------------------------ the call

    def _groups(self, sample: torch.Tensor, args, kwargs) -> int:
        """2 when the batch is guidance pairs (rows i and i + n/2 are one image), else 1 (module docstring)."""
        n = sample.shape[0]
        if self.pair_guidance is True:
            if n < 2 or n % 2:
                raise ValueError(f"pair_guidance=True: expected a batch of guidance pairs (even size), got {n}")
            return 2
        if self.pair_guidance is False or n < 2 or n % 2:
            return 1
        # "auto": classifier-free guidance passes the same latents twice with different conditioning.
        if not torch.equal(sample[: n // 2], sample[n // 2 :]):
            return 1
        generator = self.generator
        if self.draws in ("per_sample", "static") and is_per_sample(generator):
            # one generator per image: their number says what an image is
            if len(generator) == n:
                return 1
            if len(generator) == n // 2:
                return 2
        return 2 if _halves_differ((args, kwargs), n) else 1

    def _first_call(self, call: _Call) -> None:
        """Run every level on image 0's rows: output shapes, dtypes and devices must agree; count FLOPs when costs
        are not given.  The probe runs without autograd on a detached view of the rows' sample (the call itself
        keeps the sample's graph, for gradient-based guidance)."""
        one = torch.zeros(1, dtype=torch.long, device=call.sample.device)
        state = call.state[:1].detach()
        shapes, likes, flops = [], [], []
        levels, call.models = call.models, self.models  # the probe runs eagerly (no graph for one row)
        try:
            self._probe(call, state, one, shapes, likes, flops)
        finally:
            call.models = levels
        self._check_probe(shapes, likes, flops)

    def _probe(self, call: _Call, state, one, shapes, likes, flops) -> None:
        """Run every level on image 0's rows, collecting output shapes, (dtype, device) pairs and FLOPs."""
        from torch.utils.flop_counter import FlopCounterMode

        for j in range(len(call.models)):
            counter = FlopCounterMode(display=False) if self.costs is None else contextlib.nullcontext()
            try:
                with torch.no_grad(), counter:
                    out = call.run(j, state, one)
            except (ValueError, TypeError):
                raise
            except Exception as e:  # a model built for other inputs fails inside: name it
                raise ValueError(f"level {j + 1} ({self.names[j]}): failed on the pipeline's inputs: {e}") from e
            shapes.append(tuple(out.shape[2:]))
            likes.append((out.dtype, out.device))
            flops.append(counter.get_total_flops() / call.groups if self.costs is None else 0.0)

    def _check_probe(self, shapes, likes, flops) -> None:
        """Raise unless the levels agree on their output per row; set the costs from FLOPs when not given."""
        for j in range(1, len(shapes)):
            if shapes[j] != shapes[0]:
                raise ValueError(
                    f"models: level {j + 1} ({self.names[j]}) returns {shapes[j]} per row but level 1 "
                    f"({self.names[0]}) returns {shapes[0]}; the levels must share their output shape"
                )
            if likes[j] != likes[0]:
                raise TypeError(
                    f"models: level {j + 1} ({self.names[j]}) returns {likes[j][0]} on {likes[j][1]} but level 1 "
                    f"({self.names[0]}) returns {likes[0][0]} on {likes[0][1]}; the levels must return one dtype on "
                    "one device (the estimate adds their outputs): cast them alike, e.g. model.to(torch.float32)"
                )
        self._out_shape = shapes[0]
        self._out_like = likes[0]
        if self.costs is None:
            for j, f in enumerate(flops):
                if f <= 0:
                    raise ValueError(
                        f"costs: level {j + 1} ({self.names[j]}) counted 0 FLOPs (not made of torch matrix products "
                        "or convolutions); pass costs="
                    )
            for j in range(1, len(flops)):
                if flops[j] < flops[j - 1]:
                    raise ValueError(
                        f"models: expected cheapest first, but level {j + 1} ({self.names[j]}, {flops[j]:.4g} FLOPs "
                        f"per row) costs less than level {j} ({self.names[j - 1]}, {flops[j - 1]:.4g})"
                    )
            self.costs = tuple(float(f) for f in flops)

    def forward(self, sample: torch.Tensor, timestep=None, *args, **kwargs):
        if not isinstance(sample, torch.Tensor) or sample.ndim < 1:
            got = "a 0-dim tensor" if isinstance(sample, torch.Tensor) else type(sample).__name__
            raise TypeError(f"sample: expected a tensor of shape (batch, ...), got {got}")
        if sample.shape[0] < 1:
            raise ValueError(f"sample: got an empty batch (shape {tuple(sample.shape)}); expected at least one row")
        if timestep is None:
            if "timestep" not in kwargs:
                raise TypeError("timestep: missing (pass it as the second argument or timestep=)")
            timestep = kwargs.pop("timestep")
        return_dict = kwargs.get("return_dict", True)
        n = sample.shape[0]
        tau = _single_timestep(timestep, n)
        if self.compile_levels and not isinstance(timestep, torch.Tensor):
            timestep = torch.tensor(timestep, device=sample.device)  # a number would be specialised into the graph
        levels = self._levels if self.compile_levels else self.models
        call = _Call(levels, self.names, sample, timestep, args, kwargs, self._groups(sample, args, kwargs), tau)
        if self._out_shape is None:
            self._first_call(call)
            # built once the costs are known (measured on this first call, or given)
            self._ladder = Ladder(list(self.models), self.costs, self.names)
        K = len(self.models)
        evaluator = _RowEvaluator(self._ladder, call, self._out_shape, self._out_like)
        if self._recording is not None:
            est = self._record(evaluator, call, tau)
        elif self._forward_hook is not None:
            est = self._forward_hook(evaluator, call, tau)
        else:
            generator = self.generator
            if self.draws in ("per_sample", "static"):
                check_generators(generator, call.images)
            elif is_per_sample(generator):
                raise ValueError("generator: a list of per-image generators needs draws='per_sample' or 'static'")
            if self.compile_levels and self.draws == "static":
                check_compile_buckets(bucket_sizes(call.images, self.buckets))
            options = dict(draws=self.draws, generator=generator, check_finite=self.check_finite, buckets=self.buckets)
            if self.schedule is not None:
                n_call = self.call_index(tau)  # checks the scheduler first
                self.schedule.check_calls(len(self.scheduler.timesteps), "the scheduler's timestep grid")
                est = schedule_estimate(self.schedule, n_call, evaluator, call.state, tau, **options)
            else:
                est = telescoping_estimate(evaluator, call.state, tau, self.probabilities_at(tau), **options)
        for j in range(K):
            self.evaluations[j] += evaluator.evaluations[j] * call.groups
        self.calls += 1
        self.rows += n
        out = call.unstate(est)
        if not return_dict:
            return (out,)
        # Level 1 runs at every call, so its output class (the family's) is known here.
        return out if call.output_type is None else call.output_type(sample=out)

    # ------------------------------------------------------------------ calibration

    def _record(self, evaluator: _RowEvaluator, call: _Call, tau: float) -> torch.Tensor:
        """Every level on every row; record the pairwise RMS differences; return the top output."""
        outs = [evaluator(j, call.state, tau) for j in range(len(self.models))]
        K = len(outs)
        flat = [o.reshape(o.shape[0], -1).double() for o in outs]
        pairwise = np.zeros((K, K))
        for l in range(K):
            for j in range(l):
                d = float((flat[l] - flat[j]).pow(2).sum(1).mean().sqrt())
                pairwise[l, j] = pairwise[j, l] = d
        if not np.all(np.isfinite(pairwise)):
            bad = [j for j, o in enumerate(outs) if not bool(torch.isfinite(o).all())]
            raise FloatingPointError(
                f"level {bad[0] + 1} ({self.names[bad[0]]}) produced NaN or Inf at timestep {tau:g}"
            )
        t, span = self.time_and_span(tau)
        self._recording.append((t, span, pairwise, call.images))
        return outs[-1]

    @torch.no_grad()
    def calibrate(
        self,
        run: Callable[..., Any],
        *,
        steps: Sequence[int] = (5, 10, 20),
        reference_steps: Optional[int] = None,
        blocks: int = 4,
        fractions: Sequence[float] = (0.2, 0.4),
        perturbation: float = 0.5,
        seed: int = 0,
        features: Optional[Callable[[Any], Any]] = None,
    ) -> Calibration:
        """Measure the ladder along the pipeline's own trajectories: ``run()`` or ``run(num_inference_steps)``
        calls the pipeline.

        With ``run(num_inference_steps)`` (one parameter; the user seeds the pipeline's generator inside, so
        every run starts from the same noise), the pipeline is measured too, for :meth:`plan` to compare
        schedules by predicted error (:mod:`multilevel_em.diffusion.pipeline_calibration`): the top model
        alone at each of ``steps`` calls and at ``reference_steps`` (default twice the largest), every level
        at every call at the largest of ``steps`` (the level differences, as below), ``blocks`` runs with the
        model output perturbed by ``perturbation`` times the ladder's difference f^K - f^1, with a random sign per
        image and call, on one block of calls each (the output's sensitivity; ``seed`` seeds the signs), and a
        switch to each cheaper level for each of ``fractions`` of the first calls at each of ``steps`` (so at most
        ``len(steps) + 1 + blocks + (K - 1) len(fractions) len(steps)`` runs in all). Errors are RMS over images
        and elements of what ``run`` returns; the measurements are kept in ``self.pipeline_measurements``
        (``.runs``: the pipeline runs they took). If a run fails, the model's earlier calibration is kept.
        ``features``: optionally, a function of what ``run`` returns (as a float64 array) to an ``(images, d)``
        array of features (a classifier's penultimate layer, CLIP or Inception embeddings): then
        ``plan(budget, criterion="distribution")`` can score schedules by the Frechet distance of their
        features to the reference run's.

        During ``run()`` every level runs on every row at every call and the top model's output
        is returned, so the trajectory is the top model's, with the pipeline's scheduler,
        conditioning and guidance.  Recorded per call: the RMS difference between every pair of
        levels (over the batch, in output units), its time and span.  Returns (and stores as
        ``self.calibration``) a :class:`~multilevel_em.Calibration` over t = (timestep + 1) / T
        (costs, delta_l(t), errors against the top model and gamma when 3+ levels), whose
        ``rates(mu)`` serve as ``rates=``; :meth:`plan` sizes them to a budget for this call grid.
        It costs one pipeline run with all K models at every call; a few images suffice.
        """
        if len(self.models) < 2:
            raise ValueError("calibrate: needs at least 2 models")
        if features is not None and not callable(features):
            raise TypeError(f"features: expected a function of the pipeline's output, got {type(features).__name__}")
        if callable(run) and takes_steps(run):
            before = (self.calibration, self._call_grid, self.pipeline_measurements, self._pipeline)
            try:
                cal, meas, reference = calibrate_pipeline(
                    self,
                    run,
                    steps=steps,
                    reference_steps=reference_steps,
                    blocks=blocks,
                    fractions=fractions,
                    perturbation=perturbation,
                    seed=seed,
                )
                ref_features = None if features is None else output_features(features, reference)
            except BaseException:
                self.calibration, self._call_grid, self.pipeline_measurements, self._pipeline = before
                raise
            self.pipeline_measurements = meas
            self._pipeline = (run, features, ref_features)
            return cal
        elif features is not None:
            raise ValueError("features: needs run(num_inference_steps) (a run that takes the number of steps)")
        self.pipeline_measurements, self._pipeline = None, None
        if not callable(run):
            raise TypeError("run: expected a callable that runs the pipeline once, e.g. lambda: pipe(prompt, ...)")
        if self._recording is not None:
            raise RuntimeError(
                "calibrate: this model is already calibrating (calibrate() was called from inside the run() of "
                "another calibrate() of it); call it once, with run() running the pipeline"
            )
        if self.scheduler is None:
            self._spans()  # fails now, with its message
        _num_train_timesteps(self.scheduler)
        if getattr(self.scheduler, "timesteps", None) is not None:
            self._spans()  # set: they must be numbers (unset ones are set by the pipeline inside run())
        self._recording = []
        try:
            run()
            records = self._recording
        finally:
            self._recording = None
        if not records:
            raise ValueError(
                "calibrate: run() never called this model; pass a function that runs the pipeline "
                "whose denoiser is this MultilevelModel (pipe.unet or pipe.transformer = this model)"
            )
        by_time: Dict[float, list] = {}
        for t, _, pw, _ in records:
            by_time.setdefault(t, []).append(pw**2)
        times = np.array(sorted(by_time))
        pairwise = np.stack([np.sqrt(np.mean(by_time[t], axis=0)) for t in times])
        K = len(self.models)
        errors_t = pairwise[:, :, K - 1].copy()
        errors = np.sqrt((errors_t**2).mean(0))
        costs = np.asarray(self.costs, dtype=np.float64)
        fit = [l for l in range(K - 1) if errors[l] > 0]
        gamma = gamma_se = None
        if len(fit) >= 2 and len({errors[l] for l in fit}) > 1:
            gamma, gamma_se = loglog_slope([costs[l] for l in fit], [errors[l] for l in fit])
        else:
            fit = []
        cal = Calibration(
            t0=0.0,
            t1=1.0,
            times=times,
            names=tuple(self.names),
            costs=costs,
            ladder_costs=costs.copy(),
            timing="given",
            cost_unit="per-row cost (FLOPs when measured)",
            pairwise=pairwise,
            errors_t=errors_t,
            reference="top",
            n_states=int(records[0][3]),
            gamma=gamma,
            gamma_se=gamma_se,
            fit_levels=tuple(fit),
        )
        self.calibration = cal
        self._call_grid = ([r[0] for r in records], [r[1] for r in records])
        return cal

    def plan(
        self,
        budget: float,
        *,
        levels: Optional[Sequence[int]] = None,
        criterion: str = "pathwise",
        boot: int = 200,
        seed: int = 0,
    ):
        """Plan for ``budget`` top-level equivalents per image.

        After ``calibrate(run)`` with ``run(num_inference_steps)``: compares schedules at that cost (the top model
        alone at floor(budget) calls, the best deterministic switch, ML-EM with closed-form rates over call
        counts, and the best hybrid: a cheaper level for the first calls, ML-EM after; :func:`~multilevel_em.calibration.schedules.plan_schedules`), sets ``self.schedule`` to the one
        with the lowest predicted error and returns the :class:`~multilevel_em.calibration.schedules.SchedulePlan`
        (``.candidates``, ``.choice``, ``.message``, ``.pipeline_kwargs``: pass them to the pipeline call).
        ``criterion="distribution"`` (needs ``calibrate(run, features=f)``) runs each candidate and every switch
        that fits the budget once (the level draws seeded by ``seed``) and picks the lowest Frechet distance of
        their features to the reference run's, with ``boot`` bootstrap resamples for the intervals and the
        paired differences to the top model alone (each candidate's ``fd``, ``fd_ci``, ``fd_minus_top``,
        ``fd_minus_top_ci``); the pathwise criterion, the default, needs no features and no runs.

        After ``calibrate(run)`` with a zero-argument ``run``: sizes the calibration's closed-form rates to the
        budget.

        Uses the call grid recorded by :meth:`calibrate` (the same pipeline settings should be
        used to sample: another step count changes the cost); sets ``rates`` and returns the
        :class:`~multilevel_em.calibration.CallPlan` (also ``self.call_plan``).  ``levels``: an
        optional 0-based sub-ladder with the top level (the other models are then not run).
        """
        if criterion not in ("pathwise", "distribution"):
            raise ValueError(f"criterion: expected 'pathwise' or 'distribution', got {criterion!r}")
        if self.calibration is None or self._call_grid is None:
            raise ValueError("plan: run calibrate(lambda: pipe(...)) first")
        if criterion != "pathwise" and self.pipeline_measurements is None:
            raise ValueError("criterion: needs calibrate(run) with run(num_inference_steps) first")
        if self.pipeline_measurements is not None:
            if levels is not None:
                raise ValueError("levels: a schedule plan chooses its levels itself; leave levels out")
            measured, now = self.pipeline_measurements.scheduler, type(self.scheduler).__name__
            if measured and measured != now:
                raise ValueError(
                    f"plan: the calibration was measured with {measured}, but the scheduler is now {now}; "
                    "calibrate again with this scheduler"
                )
            plan = plan_schedules(self.calibration, self.pipeline_measurements, budget, self.call_grid)
            if criterion == "distribution":
                run, features, ref_features = self._pipeline or (None, None, None)
                if features is None:
                    raise ValueError(
                        "criterion: 'distribution' needs features; calibrate(run, features=f) with f mapping the "
                        "pipeline's output to (images, d) features"
                    )
                if isinstance(boot, bool) or not isinstance(boot, int) or boot < 20:
                    raise ValueError(f"boot: expected an integer >= 20 bootstrap resamples, got {boot!r}")
                plan = score_distribution(self, run, features, ref_features, plan, boot=boot, seed=seed)
            self.set_schedule(plan.choice.schedule)
            self.schedule_plan = plan
            return plan
        plan = self.calibration.plan_calls(budget, *self._call_grid, levels=levels)
        if len(plan.levels) != len(self.models):
            raise ValueError(
                "levels: a sub-ladder plan needs a MultilevelModel over those models; build one with "
                "MultilevelModel([models[i] for i in plan.levels], ...)"
            )
        self.set_rates(plan.rates)
        self.call_plan = plan
        return plan

    @property
    def schedule_calibration(self):
        """What :meth:`calibrate` with ``run(num_inference_steps)`` measured, as one
        :class:`~multilevel_em.calibration.ScheduleCalibration` (``.to_dict()`` is JSON; a
        :class:`~multilevel_em.Calibration` files it under ``schedules``); None before such a calibration."""
        if self.pipeline_measurements is None or self.calibration is None:
            return None
        return ScheduleCalibration(self.calibration, self.pipeline_measurements)

    def load_schedule_calibration(self, measured) -> None:
        """Use a saved :attr:`schedule_calibration` (a :class:`~multilevel_em.calibration.ScheduleCalibration`, its
        dict, or the path of a file ``ScheduleCalibration.save`` wrote; validated completely): :meth:`plan` then
        works without calibrating again. Refuses one measured on another number of levels, on levels of other
        relative costs (when this model's costs are known) or with another scheduler class, naming both. Features for
        ``criterion="distribution"`` are not saved: that criterion needs ``calibrate(run, features=f)``."""
        if isinstance(measured, dict):
            measured = ScheduleCalibration.from_dict(measured, "schedule_calibration")
        elif isinstance(measured, (str, os.PathLike)):
            measured = ScheduleCalibration.load(measured)
        if not isinstance(measured, ScheduleCalibration):
            raise TypeError(f"measured: expected a ScheduleCalibration or its dict, got {type(measured).__name__}")
        K = len(self.models)
        if measured.calls.n_levels != K:
            raise ValueError(f"measured: made on a ladder of {measured.calls.n_levels} levels, this model has {K}")
        if self.costs is not None:  # the same number of levels but other models: their costs differ
            mine, theirs = np.asarray(self.costs, dtype=np.float64), np.asarray(measured.calls.costs, dtype=np.float64)
            if not np.allclose(mine / mine[-1], theirs / theirs[-1], rtol=1e-6):
                raise ValueError(
                    f"measured: made on a ladder with relative costs {np.round(theirs / theirs[-1], 4).tolist()}, "
                    f"this model's are {np.round(mine / mine[-1], 4).tolist()}: another ladder"
                )
        if self.scheduler is None:
            self._spans()  # fails, saying why a scheduler is needed
        was, now = measured.pipeline.scheduler, type(self.scheduler).__name__
        if was and was != now:
            raise ValueError(f"measured: made with the scheduler {was}, this model's is {now}")
        self.calibration = measured.calls
        self.pipeline_measurements = measured.pipeline
        self._call_grid = tuple(self.call_grid(measured.pipeline.steps[-1]))
        self._pipeline = None

    def extra_repr(self) -> str:
        mode = next(
            (name for name in ("probabilities", "rates", "schedule") if getattr(self, name) is not None), "unset"
        )
        extra = ", compile=True" if self.compile_levels else ""
        return f"levels={len(self.models)}, draws={self.draws!r}, pair_guidance={self.pair_guidance!r}, {mode}{extra}"

"""``MultilevelPipeline``: sample images from a UNet ladder with ML-EM or a one-model baseline.

Diffusers-style front door::

    pipe = MultilevelPipeline.from_pretrained("multilevel_em/images/pretrained/digits")
    out = pipe(16, method="mlem", budget=100, generator=torch.Generator().manual_seed(0))
    out.images      # numpy (n, H, W, C) float32 in [0, 1]
    out.pil         # list of PIL images
    out.report      # cost per level, top-level equivalents, FLOPs and wall-clock seconds
    pipe.save_pretrained("my-ladder")

Calibration (:meth:`MultilevelPipeline.calibrate`) treats sampling as an SDE in reverse time
s = t_max - t on [0, t_max - t_min], whose drift levels are the reverse-SDE drifts

    f^l(x, s) = beta(t) (x / 2 - eps^l(x, t) / sigma(t)),   g(s) = sqrt(beta(t)),

i.e. exactly what the "em" sampler integrates; its rates (per unit time) are mapped back to t.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch

from ..calibration import Calibration, calibrate, planning
from ..calibration.model import ScheduleCalibration
from ..calibration.planning import BUDGET_TOLERANCE as _BUDGET_TOLERANCE
from ..calibration.planning import budget_steps
from ..calibration.rates import ReverseTimeRate
from ..calibration.samplers import CURVE_STEPS, GAIN_STEPS, SamplerFit, check_samplers, measure_samplers
from ..diffusion import MultilevelDenoiser, MultilevelModel, TStitchDenoiser, sample
from ..diffusion.registry import (
    DEFAULT_STEPS,
    METHOD_SPECS,
    METHODS,
    measurable_samplers,
    sampler_spec,
    schedule_samplers,
)
from ..diffusion.samplers import make_scheduler, scheduler_loop
from ..engine import CallSchedule, Ladder, all_finite, randn
from ..engine.random import Generators, check_generators, is_per_sample
from .ladder import CheckpointError, UNetLadder, load_ladder

__all__ = ["MultilevelPipeline", "PipelineOutput", "ReverseTimeRate", "image_grid", "METHODS"]

CALIBRATION = "calibration.json"
#: ML-EM's budget (top-level equivalents per sample) when neither rates nor budget is given.
DEFAULT_MLEM_BUDGET = 100.0
#: calibrate_schedules' defaults: step counts that divide the 1000 training timesteps (DDIM stays on its grid).
SCHEDULE_STEPS = (5, 10, 20, 40)
SCHEDULE_REFERENCE_STEPS = 100
_SCHEDULE_SAMPLERS = dict.fromkeys(schedule_samplers(), "ode")
T_MIN = 1e-3  # where the continuous-time samplers stop
#: "mlem" with budget= and steps=: the plan may fall this far (relative) below the budget, no more
#: (:data:`multilevel_em.calibration.planning.BUDGET_TOLERANCE`).


def _derived(generator: Optional[torch.Generator]) -> tuple:
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)


def _split_generator(generator: Generators, batch_size: int) -> tuple:
    """Two independent streams from ``generator``: (noise, level draws); per sample for a list."""
    check_generators(generator, batch_size)
    if not is_per_sample(generator):
        return _derived(generator)
    pairs = [_derived(g) for g in generator]
    return [p[0] for p in pairs], [p[1] for p in pairs]


class _ReverseDrift:
    """f^l(x, s) = beta(t) (x / 2 - eps(x, t) / sigma(t)) at t = t_max - s (a picklable level)."""

    def __init__(self, eps_model, schedule):
        self.eps_model, self.schedule = eps_model, schedule

    def __call__(self, x, s):
        t = self.schedule.t_max - float(s)
        # d/ds = -d/dt: the reverse-SDE drift times dt = -1 per unit of s (x (batch, C, H, W), per unit of s).
        return self.schedule.reverse_sde_drift(x, t, self.eps_model(x, t), dt=-1.0)


class _FiniteEps:
    """An eps model whose outputs are checked for NaN/Inf (the engine's test), named by the ladder's own
    level numbering: a sub-ladder (a plan's levels, the top level alone) still says "level 4 (width 32)"."""

    def __init__(self, model, label: str):
        self.model, self.label = model, label

    def __call__(self, x, t):
        out = self.model(x, t)
        if not all_finite(out):
            tt = float(t.reshape(-1)[0]) if isinstance(t, torch.Tensor) else float(t)
            raise FloatingPointError(f"{self.label} produced NaN or Inf at t={tt:.4g} (are its weights corrupt?)")
        return out


class _RowByRow:
    """An eps model evaluated one row at a time: a row's result does not depend on its batch."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x, t):
        per_row = isinstance(t, torch.Tensor) and t.ndim == 1
        return torch.cat([self.model(x[i : i + 1], t[i : i + 1] if per_row else t) for i in range(x.shape[0])])


@dataclass
class PipelineOutput:
    """Images and what they cost.

    Attributes:
        images: numpy float32 ``(n, H, W, C)`` in [0, 1].
        pil: the same as PIL images (mode "L" or "RGB").
        x: the raw samples, a tensor ``(n, C, H, W)`` in the data scale [-1, 1] (not clipped).
        report: method, steps, per-level evaluations and cost shares, cost in top-level
            equivalents and FLOPs per sample, wall-clock seconds.
    """

    images: np.ndarray
    pil: list
    x: torch.Tensor
    report: Dict = field(default_factory=dict)


def to_numpy_images(x: torch.Tensor) -> np.ndarray:
    """(n, C, H, W) in [-1, 1] -> (n, H, W, C) float32 in [0, 1] (clipped)."""
    return ((x.detach().float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()


def to_pil(images: np.ndarray) -> list:
    from PIL import Image

    u8 = np.round(images * 255).astype(np.uint8)
    return [Image.fromarray(a[..., 0], "L") if a.shape[-1] == 1 else Image.fromarray(a, "RGB") for a in u8]


def grid_size(n: int, height: int, width: int, ncols: Optional[int] = None, scale: int = 1, pad: int = 1):
    """``(width, height)`` in pixels of :func:`image_grid`'s picture of ``n`` images of ``height x width``: known
    before any image is made, so that a caller can refuse a grid too large to hold in memory."""
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    return (ncols * (width + pad) + pad) * scale, (nrows * (height + pad) + pad) * scale


def image_grid(images: np.ndarray, ncols: Optional[int] = None, scale: int = 1, pad: int = 1):
    """A PIL image tiling ``images`` (n, H, W, C) in [0, 1], ``ncols`` per row, upscaled by ``scale``
    (:func:`grid_size` pixels)."""
    from PIL import Image

    n, H, W, C = images.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    grid = np.ones((nrows * (H + pad) + pad, ncols * (W + pad) + pad, C), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncols)
        grid[pad + r * (H + pad) : pad + r * (H + pad) + H, pad + c * (W + pad) : pad + c * (W + pad) + W] = images[i]
    u8 = np.round(grid * 255).astype(np.uint8)
    im = Image.fromarray(u8[..., 0], "L") if C == 1 else Image.fromarray(u8, "RGB")
    return im.resize((im.width * scale, im.height * scale), Image.NEAREST) if scale > 1 else im


class MultilevelPipeline:
    """A UNet ladder + its calibration; ``pipe(n, method=...)`` samples images and reports the cost.

    Args:
        ladder: a :class:`UNetLadder` (cheapest level first).
        calibration: a :class:`~multilevel_em.Calibration` of the ladder in reverse time (see
            :meth:`calibrate`), needed for ``method="mlem"`` without explicit ``rates``.
    """

    def __init__(self, ladder: UNetLadder, calibration: Optional[Calibration] = None):
        if not isinstance(ladder, UNetLadder):
            raise TypeError(f"ladder: expected a UNetLadder, got {type(ladder).__name__}")
        if ladder.conditional:
            raise ValueError(
                f"ladder: {ladder} has UNet2DConditionModel levels; MultilevelPipeline samples unconditional "
                "ladders only. Sample it with multilevel_em.diffusion.MultilevelModel "
                "(multilevel_em.images.conditioning.sample_ladder(ladder, conditioning_rows, ...))"
            )
        self.ladder = ladder
        self.calibration = calibration
        if calibration is not None:
            self._check_calibration(calibration)

    @property
    def device(self) -> torch.device:
        """Where the UNets are (and where sampling runs); move them with :meth:`to`."""
        return next(self.ladder.unets[-1].parameters()).device

    def to(self, device) -> "MultilevelPipeline":
        """Move every UNet to ``device`` (e.g. "cuda"); random numbers are still drawn on the CPU,
        so a seed gives the same noise on every device."""
        for u in self.ladder.unets:
            u.to(device)
        return self

    # ------------------------------------------------------------------ files

    @classmethod
    def from_pretrained(cls, path: str) -> "MultilevelPipeline":
        """Load a ladder folder (and its ``calibration.json`` if present)."""
        path = os.fspath(path)
        ladder = load_ladder(path)
        cal_path = os.path.join(path, CALIBRATION)
        calibration = None
        if os.path.exists(cal_path):
            try:
                calibration = Calibration.load(cal_path)  # every field checked; errors say "PATH: field: ..."
            except ValueError as e:
                raise CheckpointError(str(e)) from None
            except OSError as e:
                raise CheckpointError(f"{cal_path}: cannot read it: {e.strerror or e}") from None
            if list(calibration.names) != ladder.names:
                raise CheckpointError(
                    f"{cal_path}: names: made for levels {list(calibration.names)}, but the ladder in {path} has "
                    f"{ladder.names}; recalibrate it (`mlem calibrate --ladder {path}`)"
                )
        return cls(ladder, calibration)

    def save_pretrained(self, path: str) -> None:
        """Write the ladder (configs + sampling weights) and the calibration, if any."""
        self.ladder.save(os.fspath(path))
        if self.calibration is not None:
            self.save_calibration(path)

    def save_calibration(self, path: str) -> None:
        if self.calibration is None:
            raise ValueError("no calibration to save: run pipe.calibrate() first")
        self.calibration.save(os.path.join(os.fspath(path), CALIBRATION))

    def _check_calibration(self, cal: Calibration) -> None:
        if cal.n_levels != len(self.ladder) or list(cal.names) != self.ladder.names:
            raise ValueError(f"calibration: made for levels {list(cal.names)}, but the ladder has {self.ladder.names}")
        for name, measured in cal.schedules.items():  # filed by sampler name: each must be one this pipeline runs
            if name not in _SCHEDULE_SAMPLERS:
                raise ValueError(
                    f"calibration: schedules.{name}: not a sampler a schedule can run in here (expected "
                    f"{', '.join(_SCHEDULE_SAMPLERS)})"
                )
            want = sampler_spec(name).scheduler
            if measured.pipeline.scheduler and measured.pipeline.scheduler != want:
                raise ValueError(
                    f"calibration: schedules.{name}: measured with {measured.pipeline.scheduler}, but {name} runs {want}"
                )

    # ------------------------------------------------------------------ calibration

    def drift_ladder(self, trace: bool = False) -> Ladder:
        """The reverse-time SDE drifts of the levels (module docstring), costs in FLOPs per sample;
        ``trace``: of the traced UNets (so that ``calibrate(timing="wall")`` times what sampling runs)."""
        s = self.ladder.schedule
        return Ladder(
            [_ReverseDrift(m, s) for m in self.ladder.eps_models(trace)], self.ladder.costs, self.ladder.names
        )

    def calibrate(
        self,
        n: int = 16,
        steps: int = 144,
        generator: Optional[torch.Generator] = None,
        t_min: float = T_MIN,
        timing: str = "flops",
        trace: bool = False,
    ) -> Calibration:
        """Measure the ladder along reverse-SDE trajectories of the top level; stores and returns it.

        ``n`` noise images, ``steps`` EM steps (and 8 ``steps`` for the step-error estimate);
        12 calibration times, denser near the data end where the drifts differ most.
        ``timing``: the level costs the plans use: ``"flops"`` (FLOPs per sample, the default) or
        ``"wall"`` (median seconds per sample of each level on the ``n`` images, on this machine);
        ``trace``: measure the TorchScript-traced levels (what ``pipe(..., trace=True)`` runs), so
        that wall costs describe the execution that will sample.  With wall costs a ``budget`` is in
        units of the top level's measured seconds (plans then spend real time, not FLOPs, well).
        """
        if timing not in ("flops", "wall"):
            raise ValueError(f"timing: expected 'flops' or 'wall', got {timing!r}")
        if not isinstance(trace, bool):
            raise TypeError(f"trace: expected a bool, got {trace!r}")
        sch = self.ladder.schedule
        S = sch.t_max - t_min
        h = S / steps
        idx = sorted(
            {int(round(f * steps)) for f in (0, 1 / 9, 2 / 9, 3 / 9, 4 / 9, 5 / 9, 6 / 9, 7 / 9, 8 / 9, 0.94, 0.97)}
            | {steps - 1}
        )
        times = [i * h for i in idx]
        x = torch.randn((n, *self.ladder.shape), generator=generator).to(self.device)
        noise_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        with torch.no_grad():
            cal = calibrate(
                self.drift_ladder(trace),
                x,
                t0=0.0,
                t1=S,
                times=times,
                steps=steps,
                timing=timing,
                diffusion=lambda s: math.sqrt(float(sch.beta(sch.t_max - float(s)))),
                generator=noise_gen,
                fit_gamma=len(self.ladder) >= 3,
            )
        self.calibration = cal
        return cal

    def sampler_runner(self, n: int, seed: int = 0) -> Callable[..., torch.Tensor]:
        """What :func:`multilevel_em.calibration.samplers.measure_samplers` runs: ``run(sampler, steps)`` samples
        ``n`` images (raw, ``(n, C, H, W)``) with the top level alone, ``run(sampler, steps, plan)`` with ML-EM
        following ``plan`` (a :class:`~multilevel_em.calibration.Plan` in reverse time) inside ``sampler``;
        every run from the same noise (``seed``)."""
        t_max = self.ladder.schedule.t_max

        def run(sampler: str, steps: int, plan=None) -> torch.Tensor:
            kw = (
                {}
                if plan is None
                else dict(
                    method="mlem",
                    sampler=sampler,
                    levels=list(plan.levels),
                    rates=[ReverseTimeRate(r, t_max) for r in plan.rates],
                )
            )
            kw.setdefault("method", sampler)
            return self(n, steps=steps, generator=torch.Generator().manual_seed(seed), **kw).x

        return run

    def calibrate_samplers(
        self,
        samplers: Optional[Sequence[str]] = None,
        *,
        n: int = 16,
        steps: Optional[Sequence[int]] = None,
        ref_steps: int = 500,
        gain_steps: Optional[Sequence[int]] = None,
        seed: int = 0,
        progress: Optional[Callable[[str], None]] = None,
    ) -> Dict[str, SamplerFit]:
        """Measure each sampler's step-error curve and ML-EM's randomization gain inside it, and store them in
        ``self.calibration.samplers`` (:func:`~multilevel_em.calibration.samplers.measure_samplers`, running
        :meth:`sampler_runner`), so that ``plan(budget, sampler=...)`` and ``pipe(method="mlem", sampler=...)``
        compare ML-EM with the samplers users run (default: every measurable sampler of the registry). Needs
        :meth:`calibrate` first. Returns the new fits ``{sampler: SamplerFit}``."""
        L = self.ladder
        measurable = measurable_samplers()
        samplers = check_samplers(measurable if samplers is None else samplers, measurable)
        fits = measure_samplers(
            self.sampler_runner(n, seed),
            self.calibration,
            samplers,
            n=n,
            steps=CURVE_STEPS if steps is None else steps,
            ref_steps=ref_steps,
            gain_steps=GAIN_STEPS if gain_steps is None else gain_steps,
            cheapest=L.costs[0] / L.costs[-1],
            num_train_timesteps=L.schedule.num_train_timesteps,
            progress=progress,
        )
        self.calibration.samplers.update(fits)
        return fits

    def plan(self, budget: float, steps: Optional[int] = None, sampler: Optional[str] = None):
        """``Calibration.plan(budget=..., steps=..., sampler=...)``: levels, steps (unless given) and rate scale
        for ``budget`` top-level equivalents per sample; with ``sampler``, planned inside that sampler from its
        measured step-error curve and compared with the single-model samplers (:meth:`calibrate_samplers`).
        A ``steps`` whose plan spends clearly less than ``budget`` is refused
        (:func:`multilevel_em.calibration.planning.plan_for_budget`)."""
        self._require_calibration()
        self._check_budget(budget)
        return planning.plan_for_budget(
            self.calibration, budget, steps=steps, sampler=sampler, tolerance=_BUDGET_TOLERANCE
        )

    def sampling_plan(self, budget: float, steps: Optional[int] = None, sampler: str = "em"):
        """The plan ``pipe(method="mlem", sampler=sampler, budget=budget)`` follows: :meth:`plan` inside
        ``sampler`` when the calibration measured it; otherwise the calibration's EM model (``a h``), with a
        warning unless ``sampler`` is "em" (that model is EM's) (:func:`multilevel_em.calibration.planning.sampling_plan`)."""
        self._require_calibration()
        self._check_budget(budget)
        return planning.sampling_plan(self.calibration, budget, steps=steps, sampler=sampler, stacklevel=4)

    # ------------------------------------------------------------------ schedules of models

    def _schedule_model(self, sampler: str, generator=None, *, draws: str = "per_sample", compile: bool = False):
        """The ladder as one :class:`~multilevel_em.diffusion.MultilevelModel` in ``sampler``'s diffusers scheduler
        (no noise drawn). Returns ``(model, scheduler)``."""
        check_samplers([sampler], _SCHEDULE_SAMPLERS)
        L = self.ladder
        scheduler = make_scheduler(sampler, L.schedule)
        model = MultilevelModel(
            L.unets,
            costs=L.costs,
            names=L.names,
            scheduler=scheduler,
            generator=generator,
            draws=draws,
            compile=compile,
        )
        return model, scheduler

    def schedule_runner(
        self, sampler: str, n: int, generator: Generators = None, *, draws: str = "per_sample", compile: bool = False
    ):
        """The ladder as one :class:`~multilevel_em.diffusion.MultilevelModel` in ``sampler``'s diffusers scheduler
        (one of :func:`~multilevel_em.diffusion.registry.schedule_samplers`), and ``run(num_inference_steps)``:
        the package's scheduler loop (:func:`~multilevel_em.diffusion.samplers.scheduler_loop`, driving the
        model as a diffusers pipeline does) from the same ``n`` noise images every time (drawn once here from
        ``generator``'s noise stream, which this advances), returning the raw samples ``(n, C, H, W)``. What
        :meth:`calibrate_schedules` measures and what a schedule that :meth:`choose` picks runs. ``draws`` and
        ``compile`` are :class:`~multilevel_em.diffusion.MultilevelModel`'s.
        Returns ``(model, run)``; ``model.schedule`` decides which levels each call uses."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected an int >= 1 (images per run), got {n!r}")
        g_noise, g_draws = _split_generator(generator, n)
        model, scheduler = self._schedule_model(sampler, g_draws, draws=draws, compile=compile)
        L = self.ladder
        x_T = randn((n, *L.shape), g_noise, device=self.device)
        spec = sampler_spec(sampler)

        @torch.no_grad()
        def run(num_inference_steps: int, callback=None) -> torch.Tensor:
            x, _ = scheduler_loop(
                model,
                x_T * scheduler.init_noise_sigma,
                L.schedule,
                int(num_inference_steps),
                spec=spec,
                generator=None,
                scheduler=scheduler,
                model_kwargs={},
                callback=callback,
            )
            return x

        return model, run

    def calibrate_schedules(
        self,
        samplers: Optional[Sequence[str]] = None,
        *,
        n: int = 32,
        steps: Sequence[int] = SCHEDULE_STEPS,
        reference_steps: int = SCHEDULE_REFERENCE_STEPS,
        blocks: int = 4,
        seed: int = 0,
        progress: Optional[Callable[[str], None]] = None,
    ) -> Dict[str, ScheduleCalibration]:
        """Measure what the schedule planner needs inside each sampler (default: every one of
        :func:`~multilevel_em.diffusion.registry.schedule_samplers`), along that sampler's own calls from ``n``
        fixed noise images (``seed``): :meth:`multilevel_em.diffusion.MultilevelModel.calibrate` with
        :meth:`schedule_runner`'s ``run`` (the top model alone at ``steps`` and ``reference_steps`` calls, the
        level differences at every call, the sensitivity on ``blocks`` blocks of calls, the switches). The
        defaults divide the 1000 training timesteps, so DDIM stays on its own grid. Stored in
        ``self.calibration.schedules`` (saved with the calibration); :meth:`choose` and ``method="auto"`` then
        plan with them, for budgets up to the largest of ``steps``. Needs :meth:`calibrate` first.
        ``progress(sampler)`` is called after each sampler. Returns the new measurements
        ``{sampler: ScheduleCalibration}``."""
        if self.calibration is None:
            raise ValueError("calibrate_schedules: run pipe.calibrate() first (the calibration holds the measurements)")
        if isinstance(samplers, str):
            raise TypeError(f"samplers: expected a list of names, got the string {samplers!r}")
        names = list(
            check_samplers(list(_SCHEDULE_SAMPLERS) if samplers is None else list(samplers), _SCHEDULE_SAMPLERS)
        )
        out = {}
        for name in names:
            model, run = self.schedule_runner(name, n, torch.Generator().manual_seed(seed))
            model.calibrate(run, steps=steps, reference_steps=reference_steps, blocks=blocks, seed=seed)
            out[name] = model.schedule_calibration
            if progress is not None:
                progress(name)
        self.calibration.schedules.update(out)
        return out

    def plan_schedule(self, budget: float, sampler: str):
        """The schedule plan inside ``sampler`` for ``budget`` top-level equivalents per sample, from
        :meth:`calibrate_schedules`' measurements (:func:`~multilevel_em.calibration.schedules.plan_schedules`:
        the top model alone at floor(budget) steps, the best switch, the best ML-EM, the best hybrid, each
        with predicted error and cost). Refuses a budget whose floor is beyond the measured call counts (the
        top model alone would have no measured error there, and the plan would compare cheaper schedules
        only). Returns the :class:`~multilevel_em.calibration.schedules.SchedulePlan`."""
        if self.calibration is None or sampler not in self.calibration.schedules:
            have = ", ".join(sorted(self.calibration.schedules)) if self.calibration is not None else ""
            raise ValueError(
                f"sampler: no schedule measurements for {sampler!r} (measured: {have or 'none'}); run "
                f"pipe.calibrate_schedules([{sampler!r}]) or `mlem calibrate --ladder DIR --schedules {sampler}`"
            )
        self._check_budget(budget)
        measured = self.calibration.schedules[sampler]
        top, low = measured.pipeline.steps[-1], measured.pipeline.steps[0]
        if 1 <= budget_steps(budget) < low:
            raise ValueError(
                f"budget: {budget:g} top-level equivalents per sample is below what was measured in {sampler} (the "
                f"top model alone at {low} steps or more), so the plan could not compare with the top model alone; "
                f"calibrate_schedules with steps= down to {budget_steps(budget)}, or a budget of at least {low}"
            )
        if budget_steps(budget) > top:
            raise ValueError(
                f"budget: {budget:g} top-level equivalents per sample is beyond what was measured in {sampler} (the "
                f"top model alone at up to {top} steps); calibrate_schedules with steps= reaching "
                f"{budget_steps(budget)} (`mlem calibrate --schedules`), or a budget of at most {top}"
            )
        model, _ = self._schedule_model(sampler)
        model.load_schedule_calibration(measured)
        return model.plan(budget)

    def _choose_schedule(self, budget: float) -> Dict:
        cands = []
        for name in sorted(self.calibration.schedules):
            plan = self.plan_schedule(budget, name)
            for c in plan.candidates:
                cands.append(
                    {
                        "method": "schedule",
                        "sampler": name,
                        "steps": c.num_inference_steps,
                        "schedule": c.name,
                        "kind": c.kind,
                        "predicted_error": c.predicted_error,
                        "predicted_top_equivalents": c.predicted_cost,
                        "call_schedule": c.schedule.to_dict(),
                    }
                )
        best = min(cands, key=lambda c: (c["predicted_error"], c["predicted_top_equivalents"]))
        return {**best, "planner": "schedules", "candidates": cands}

    def _run_schedule(self, batch_size: int, choice: Dict, budget: float, kw: Dict) -> PipelineOutput:
        """Run the schedule ``choice`` (from :meth:`choose` for ``budget``) on ``batch_size`` images (``kw``: the
        call's options)."""
        for name in ("trace", "batch_invariant"):
            if kw.get(name):
                raise ValueError(
                    f"{name}: not supported when method='auto' picks a schedule of models ({choice['schedule']}); "
                    f"leave {name} out"
                )
        if kw.get("buckets") is not None:
            raise ValueError("buckets: not supported when method='auto' picks a schedule of models")
        if kw.get("t_min", T_MIN) != T_MIN:
            raise ValueError(
                "t_min: a schedule of models runs its sampler's diffusers scheduler, which sets its own end time; "
                "leave t_min out"
            )
        draws = kw.get("draws") or "per_sample"
        if draws not in ("per_sample", "shared", "static"):
            raise ValueError(f"draws: a schedule of models takes 'per_sample', 'shared' or 'static', got {draws!r}")
        model, run = self.schedule_runner(
            choice["sampler"], batch_size, kw.get("generator"), draws=draws, compile=bool(kw.get("compile"))
        )
        model.set_schedule(CallSchedule.from_dict(choice["call_schedule"]))
        start = time.perf_counter()
        x = run(choice["steps"], callback=_progress_callback(kw.get("progress")))
        wall = time.perf_counter() - start
        if not all_finite(x):
            raise FloatingPointError(
                f"method='auto': the samples of {choice['schedule']} are NaN or Inf after {choice['steps']} steps"
            )
        images = to_numpy_images(x)
        counted = SimpleNamespace(evaluations=list(model.evaluations), steps=choice["steps"])
        report = self._report(
            "schedule", choice["sampler"], counted, range(len(self.ladder)), wall, batch_size, None, budget
        )
        return PipelineOutput(images=images, pil=to_pil(images), x=x, report=report)

    def choose(self, budget: float) -> Dict:
        """What ``method="auto"`` runs for ``budget`` top-level equivalents per sample.

        With schedule measurements (:meth:`calibrate_schedules`; the one planner shared with
        :meth:`multilevel_em.diffusion.MultilevelModel.plan`): every candidate of :meth:`plan_schedule` in every
        measured sampler (the top model alone at floor(budget) steps, the best switch, the best ML-EM, the best
        hybrid), the smallest predicted error (pathwise RMS per element against that sampler's top model with
        many steps from the same noise; the deterministic samplers' references agree closely). Returns
        ``{"method": "schedule", "sampler", "steps", "schedule" (its name), "kind", "predicted_error",
        "predicted_top_equivalents", "call_schedule", "planner": "schedules", "candidates"}``.

        Otherwise, with measured sampler fits only (:meth:`calibrate_samplers`): among ML-EM planned inside each
        measured sampler and the top level alone with each at ``floor(budget)`` steps, the smallest predicted
        error (:func:`multilevel_em.calibration.planning.choose`); returns ``{"method", "sampler", "steps",
        "predicted_error", "predicted_top_equivalents", "candidates", "planner": "samplers"}`` (``sampler`` None
        for a one-model method, ``steps`` None for ML-EM: its plan's)."""
        if self.calibration is not None and self.calibration.schedules:
            self._check_budget(budget)
            return self._choose_schedule(budget)
        if self.calibration is None or not self.calibration.samplers:
            raise ValueError(
                "method='auto' needs a calibration that measured samplers: run pipe.calibrate_samplers() "
                f"(`mlem calibrate --ladder DIR --samplers {','.join(measurable_samplers())}`)"
            )
        self._check_budget(budget)
        return {**planning.choose(self.calibration, budget), "planner": "samplers"}

    def _require_calibration(self) -> None:
        if self.calibration is None:
            raise ValueError(
                "method='mlem' with budget= needs a calibration: run pipe.calibrate() (and save_pretrained), "
                "or `mlem calibrate --ladder DIR` on the command line, or pass rates="
            )

    def _check_levels(self, levels, n_rates: int) -> list:
        K = len(self.ladder)
        try:
            lv = sorted({range(K)[int(i)] for i in levels})
        except (TypeError, ValueError, IndexError):
            raise ValueError(f"levels: expected 0-based level indices in [0, {K - 1}], got {levels!r}") from None
        if len(lv) < 2 or lv[-1] != K - 1:
            raise ValueError(f"levels: expected 2 or more levels including the top level {K - 1}, got {lv}")
        if n_rates != len(lv) - 1:
            raise ValueError(f"rates: expected {len(lv) - 1} rates for levels {lv}, got {n_rates}")
        return lv

    def _check_budget(self, budget) -> None:
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
            raise ValueError(f"budget: expected a positive number of top-level equivalents per sample, got {budget!r}")
        cheapest = self.ladder.costs[0] / self.ladder.costs[-1]
        if budget < cheapest:
            raise ValueError(
                f"budget {budget:.4g} top-level equivalents per sample is too small: one step of the cheapest level "
                f"({self.ladder.names[0]}) alone costs {cheapest:.4g}"
            )

    # ------------------------------------------------------------------ sampling

    def __call__(
        self,
        batch_size: int = 16,
        *,
        method: str = "mlem",
        steps: Optional[int] = None,
        rates: Optional[Sequence] = None,
        budget: Optional[float] = None,
        generator: Generators = None,
        sampler: Optional[str] = None,
        fractions: Optional[Sequence[float]] = None,
        draws: str = "per_sample",
        t_min: float = T_MIN,
        progress: Optional[Callable[[int], None]] = None,
        batch_invariant: bool = False,
        trace: bool = False,
        levels: Optional[Sequence[int]] = None,
        compile: bool = False,
        buckets: Optional[Sequence[int]] = None,
    ) -> PipelineOutput:
        """Sample ``batch_size`` images.

        Args:
            method: ``"mlem"`` (all levels, randomized telescoping eps), a sampler's name (``"em"``, ``"ddpm"``,
                ``"ddim"``, ``"euler_ode"``, ``"dpmpp_2m"``, ``"dpmpp_sde"``, ``"unipc"``: the registry's
                :data:`~multilevel_em.diffusion.SAMPLERS`; the top level alone with that sampler), ``"auto"`` (for
                ``budget``, whichever of those the calibration predicts most accurate: :meth:`choose`;
                ``report["auto"]`` says what ran and why), ``"stitch"`` (T-Stitch:
                the cheapest level for ``fractions`` of the steps, default 40%, then the top).
            steps: step count. "mlem" with a budget (or the calibration's default): fixes the plan's
                step count (default: planned); "mlem" with rates: required. One-model methods:
                default ``floor(budget)`` with a budget, else the registry's ``DEFAULT_STEPS`` (250 em, 50 ddim and
                stitch, 20 dpmpp_2m; :mod:`multilevel_em.diffusion.registry`);
                given with a budget, it must equal ``floor(budget)`` (ValueError otherwise). None: not given.
            rates: "mlem": lambda_2..lambda_K per unit of diffusion time (numbers or callables of t);
                overrides the calibration.
            levels: "mlem" with ``rates``: the 0-based levels they are for (a sub-ladder with the top
                level, e.g. ``plan.levels``; one rate per level after the first); default all.
            budget: cost per sample in top-level equivalents: "mlem" plans levels, steps and rates
                with the stored calibration; the one-model methods take ``floor(budget)`` steps.
                Default for "mlem" without rates: 100.
            generator: seeds the initial noise, the sampler noise and the level draws; or a list
                of ``batch_size`` generators, one per image (diffusers' convention): image b's
                random numbers then come from ``generator[b]`` alone, whatever the batch
                (:func:`multilevel_em.engine.sample_generators` keys them by (seed, index);
                needs ``draws="per_sample"``).
            sampler: for "mlem" and "stitch": the sampling loop (``"em"`` default for mlem,
                ``"ddim"`` for stitch; any of :data:`multilevel_em.diffusion.SAMPLERS`). A planned "mlem"
                run is planned inside this sampler when the calibration has measured it
                (:meth:`calibrate_samplers`; the report's plan then says whether a single model with some
                sampler is predicted to do better); otherwise by the EM model, with a warning.
            draws: "mlem": ``"per_sample"``, ``"shared"``, ``"exact"`` or ``"static"`` level draws (see
                :func:`multilevel_em.solve`; ``"static"``: per-sample draws made on the host, each level run on a
                sub-batch padded to a bucket size, so that its batch sizes are known before it runs).
            buckets: ``draws="static"``: the sub-batch sizes (default: powers of two below the batch, and the batch).
            compile: run the UNets through ``torch.compile`` (on CUDA with CUDA graphs), compiled once per ladder,
                level and batch size (kept on the ladder across calls); "mlem" needs ``draws="static"`` (or
                ``"shared"``), so that a level only sees the bucket sizes. Not with ``trace``.
            progress: called with 1 after every step; or a tqdm bar (its total is set to the step count).
            batch_invariant: evaluate the UNets one image at a time, so that with per-sample generators
                an image is bit-identical whatever batch it is computed in (batched float32 kernels
                round differently for different batch sizes, ~1e-6); 3-10x slower on a CPU.
            trace: run the UNets as TorchScript traces (``UNetLadder.eps_models(trace=True)``): less
                per-call overhead, the same results as the eager forward (bit-identical in our tests);
                each UNet is traced once, on its first call (~0.3 s on a CPU).
        """
        if method not in METHODS:
            raise ValueError(f"method: expected one of {', '.join(map(repr, METHODS))}, got {method!r}")
        if method == "auto":
            _check_batch_size(batch_size)
            if rates is not None or steps is not None or sampler is not None:
                raise ValueError("method='auto' chooses the sampler, steps and rates from budget=; pass budget= only")
            return self._auto(
                batch_size,
                budget,
                dict(
                    generator=generator,
                    draws=draws,
                    t_min=t_min,
                    progress=progress,
                    batch_invariant=batch_invariant,
                    trace=trace,
                    compile=compile,
                    buckets=buckets,
                ),
            )
        self._check_call(batch_size, method, steps, rates, budget, sampler, levels)
        L = self.ladder
        if compile and method == "mlem" and draws not in ("static", "shared"):
            raise ValueError(
                f"compile: a compiled UNet needs a few fixed batch sizes, but draws={draws!r} gives every call its "
                "own sub-batch sizes (a recompilation each); pass draws='static' (or 'shared')"
            )
        if buckets is not None and (method != "mlem" or draws != "static"):
            raise ValueError("buckets: only for method='mlem' with draws='static'")
        models = self._models(trace, batch_invariant, compile)
        g_noise, g_draws = _split_generator(generator, batch_size)
        x_T = randn((batch_size, *L.shape), g_noise, device=self.device)  # drawn on the CPU: the same on any device
        denoiser, sampler, steps, levels, plan = self._denoiser(
            models, method, sampler, steps, rates, budget, levels, fractions, draws, g_draws, buckets
        )
        if steps is None:
            steps = self._one_model_steps(method, budget)
        start = time.perf_counter()
        out = sample(
            denoiser,
            x_T,
            schedule=L.schedule,
            steps=int(steps),
            sampler=sampler,
            generator=g_noise,
            t_min=t_min,
            callback=_progress_callback(progress),
        )
        wall = time.perf_counter() - start
        if not all_finite(out.x):  # finite eps can still overflow the state: never return NaN images
            raise FloatingPointError(f"method={method!r}: the samples are NaN or Inf after {out.steps} steps")
        images = to_numpy_images(out.x)
        report = self._report(method, sampler, out, levels, wall, batch_size, plan, budget)
        return PipelineOutput(images=images, pil=to_pil(images), x=out.x, report=report)

    def _auto(self, batch_size: int, budget: Optional[float], kw: dict) -> PipelineOutput:
        """``method="auto"``: run what :meth:`choose` predicts most accurate for ``budget``; ``report["auto"]``
        says what ran and why (``kw``: the other sampling options)."""
        choice = self.choose(DEFAULT_MLEM_BUDGET if budget is None else budget)
        if choice["method"] == "schedule":
            out = self._run_schedule(batch_size, choice, DEFAULT_MLEM_BUDGET if budget is None else budget, kw)
        elif choice["method"] == "mlem":
            out = self(batch_size, method="mlem", sampler=choice["sampler"], budget=budget, **kw)
        else:
            out = self(batch_size, method=choice["method"], steps=choice["steps"], **kw)
        out.report["auto"] = choice
        return out

    def _check_call(self, batch_size, method, steps, rates, budget, sampler, levels) -> None:
        """Check that ``__call__``'s arguments fit together (ValueError saying which do not)."""
        _check_batch_size(batch_size)
        if rates is not None and budget is not None:
            raise ValueError("give at most one of rates= and budget=")
        if rates is not None and method != "mlem":
            raise ValueError(f"rates: only method='mlem' uses rates, got method={method!r}")
        if levels is not None and (method != "mlem" or rates is None):
            raise ValueError("levels: only for method='mlem' with explicit rates= (a plan chooses its own levels)")
        if sampler is not None and method not in ("mlem", "stitch"):
            raise ValueError(f"sampler: method={method!r} is its own sampler; sampler= is for 'mlem' and 'stitch'")
        if budget is not None and steps is not None and method != "mlem":
            # one model: the budget only sets the step count, so a different steps= would silently override it
            self._check_budget(budget)
            if isinstance(steps, bool) or steps != budget_steps(budget):
                raise ValueError(
                    f"budget={budget!r} and steps={steps!r} disagree: method={method!r} takes floor(budget) = "
                    f"{budget_steps(budget)} steps from budget=; pass budget= or steps=, not both"
                )

    def _models(self, trace: bool, batch_invariant: bool, compile: bool = False) -> list:
        """The levels' eps models as sampling runs them: traced, compiled or eager, row by row if asked, NaN-checked."""
        L = self.ladder
        if not isinstance(trace, bool):
            raise TypeError(f"trace: expected a bool, got {trace!r}")
        if not isinstance(compile, bool):
            raise TypeError(f"compile: expected a bool, got {compile!r}")
        if trace and compile:
            raise ValueError("trace and compile: choose one (a TorchScript trace or torch.compile)")
        models = L.eps_models(trace, compile=compile)
        if batch_invariant:
            models = [_RowByRow(m) for m in models]
        models = [_FiniteEps(m, f"level {i + 1} ({name})") for i, (m, name) in enumerate(zip(models, L.names))]
        return models

    def _denoiser(
        self, models, method, sampler, steps, rates, budget, levels, fractions, draws, g_draws, buckets=None
    ) -> tuple:
        """The denoiser ``method`` samples with: ML-EM (planned from the calibration unless ``rates`` are given),
        T-Stitch, or the top level alone.  Returns (denoiser, sampler, steps (None: not yet fixed), the 0-based
        levels it runs, the plan or None)."""
        L = self.ladder
        plan = None
        rate_levels, levels = levels, list(range(len(L)))
        if method == "mlem":
            sampler = sampler or METHOD_SPECS["mlem"].default_sampler
            if rates is None:
                plan = self.sampling_plan(DEFAULT_MLEM_BUDGET if budget is None else budget, steps, sampler)
                levels = list(plan.levels)
                rates = [ReverseTimeRate(r, L.schedule.t_max) for r in plan.rates]
                steps = plan.steps
            elif steps is None:
                raise ValueError("steps: required for method='mlem' with explicit rates")
            elif rate_levels is not None:
                levels = self._check_levels(rate_levels, len(rates))
            denoiser = MultilevelDenoiser(
                [models[i] for i in levels],
                costs=[L.costs[i] for i in levels],
                rates=rates,
                draws=draws,
                buckets=buckets,
                generator=g_draws,
                schedule=L.schedule,
                names=[L.names[i] for i in levels],
            )
        elif method == "stitch":
            sampler = sampler or METHOD_SPECS["stitch"].default_sampler
            K = len(L)
            fr = [0.4] + [0.0] * (K - 2) if fractions is None else list(fractions)
            denoiser = TStitchDenoiser(models, fr, costs=L.costs, schedule=L.schedule, names=L.names)
        else:
            sampler = method
            levels = [len(L) - 1]
            denoiser = MultilevelDenoiser([models[-1]], costs=[L.costs[-1]], schedule=L.schedule, names=L.names[-1:])
        return denoiser, sampler, steps, levels, plan

    def _one_model_steps(self, method: str, budget: Optional[float]) -> int:
        """A one-model method's step count: floor(budget) with a budget (:func:`~multilevel_em.calibration.budget_steps`),
        else its default."""
        if budget is not None and method != "mlem":
            self._check_budget(budget)
            per_step = 1.0 if method != "stitch" else None
            if per_step is None:
                raise ValueError("budget: not supported for method='stitch'; pass steps=")
            steps = budget_steps(budget)
            if steps < 1:
                raise ValueError(
                    f"budget {budget:.4g} top-level equivalents per sample is too small for method={method!r}: "
                    "one step of the top level costs 1"
                )
        else:
            steps = DEFAULT_STEPS[method]
        return steps

    def _report(self, method, sampler, out, levels, wall, n, plan, budget) -> Dict:
        L = self.ladder
        per_level = []
        total_flops = 0.0
        for j, i in enumerate(levels):
            evals = out.evaluations[j] / n
            flops = evals * L.costs[i]
            total_flops += flops
            per_level.append(
                {
                    "level": i + 1,
                    "name": L.names[i],
                    "width": L.widths[i],
                    "flops": L.costs[i],
                    "evaluations_per_sample": evals,
                    "top_equivalents": flops / L.costs[-1],
                }
            )
        report = {
            "method": method,
            "sampler": sampler,
            "steps": out.steps,
            "n": n,
            "levels": per_level,
            "top_equivalents_per_sample": total_flops / L.costs[-1],
            "flops_per_sample": total_flops,
            "wall_seconds": wall,
            "wall_seconds_per_sample": wall / n,
        }
        if budget is not None:
            report["budget"] = budget
        if plan is not None:
            report["plan"] = plan_summary(plan)
        return report

    def __repr__(self) -> str:
        return f"MultilevelPipeline({self.ladder!r}, calibrated={self.calibration is not None})"


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")


def _progress_callback(progress):
    """``sample``'s ``callback(n, total)`` that calls ``progress(1)`` after every step (or, for a tqdm bar,
    ``update(1)``, with its total set to the step count on the first step); None for no progress."""
    if progress is None:
        return None
    bar = progress if hasattr(progress, "update") else None  # a tqdm bar: also set its total
    tick = bar.update if bar is not None else progress

    def callback(n, total):
        if bar is not None and n == 0:
            bar.total = total
            bar.refresh()
        tick(1)

    return callback


def plan_summary(plan) -> Dict:
    """What a sampling report says of the :class:`~multilevel_em.calibration.Plan` it followed: levels
    (1-based), mu, steps, sampler, predicted top-level equivalents and error per sample, whether ML-EM
    is predicted to help, the best one-model alternative, and the plan's message."""
    return {
        "levels": [l + 1 for l in plan.levels],
        "mu": plan.mu,
        "steps": plan.steps,
        "sampler": plan.sampler,
        "predicted_top_equivalents": plan.top_equivalents,
        "predicted_error": plan.error,
        "helps": plan.helps,
        "best_single": plan.best_single,
        "message": plan.message,
    }

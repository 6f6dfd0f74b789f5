"""Denoisers: eps-prediction models of continuous time, alone or combined across a ladder.

A *denoiser* is a callable ``eps = model(x, t)`` with ``x`` of shape ``(batch, ...)`` and ``t``
a float or a ``(batch,)`` tensor of continuous times (see :mod:`.schedule`); it returns the
predicted noise, shaped like ``x``.

Samplers talk to a denoiser through one optional method, called before every evaluation::

    denoiser.set_step(h, index=n, steps=N)   # step n of N, of size h > 0 in continuous time

A plain model needs no ``set_step`` (:func:`~multilevel_em.diffusion.sample` wraps it in a
one-level :class:`MultilevelDenoiser` for the cost accounting).  :class:`MultilevelDenoiser`
needs h for its probabilities p_l = min(1, lambda_l(t) h); :class:`TStitchDenoiser` needs the
step index to pick its model; both pass the call on to levels that have ``set_step`` themselves.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional, Sequence, Union

import torch

from ..engine import (
    Ladder,
    LevelEvaluator,
    all_finite,
    check_rates,
    firing_probabilities,
    modified_input_error,
    non_finite_error,
    telescoping_estimate,
    tensor_version,
)
from ..engine.buckets import bucket_sizes
from ..engine.compiled import CompiledLevel, check_compile_buckets
from ..engine.random import check_generators, is_per_sample
from ..engine.solver import DRAWS, check_buckets
from .outputs import model_output, single_time
from .schedule import VPSchedule

__all__ = ["DiffusersUNetAdapter", "MultilevelDenoiser", "TStitchDenoiser", "as_eps_model"]

EpsModel = Callable[[torch.Tensor, Union[float, torch.Tensor]], torch.Tensor]


class DiffusersUNetAdapter(torch.nn.Module):
    """A diffusers UNet (``UNet2DModel`` or any model taking integer timesteps) as a denoiser of continuous t.

    ``adapter(x, t)`` calls ``unet(x, k).sample`` with ``k = schedule.timestep(t)`` broadcast to
    the batch (int64), i.e. k = round(t T) - 1: the integer timestep the UNet was trained with.

    Args:
        unet: the diffusers model; its output's ``.sample`` (or first element) is returned.
        schedule: gives T (``num_train_timesteps``); default a 1000-step schedule.
        trace: run the UNet as a TorchScript trace (``torch.jit.trace``, recorded on the first
            call, once per dtype/device), which removes the per-module Python overhead of
            diffusers' forward: on the shipped digits ladder (1 CPU thread) 1.2-3x faster for
            small levels and sub-batches, results bit-identical to the eager forward in our
            tests (the trace is not frozen: freezing fuses ops and changes float rounding by
            ~1e-6).  The first traced call is checked against the eager forward; if tracing
            fails or differs, the adapter warns and stays eager.
        compile: run the UNet through ``torch.compile`` (:class:`~multilevel_em.engine.CompiledLevel`: one
            graph per batch size, CUDA graphs on CUDA); the integer timesteps are computed outside the
            compiled graph, so a new time never recompiles. Not with ``trace``.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        schedule: Optional[VPSchedule] = None,
        *,
        trace: bool = False,
        compile: bool = False,
    ):
        super().__init__()
        if not callable(unet):
            raise TypeError(f"unet: expected a diffusers model, got {type(unet).__name__}")
        if not isinstance(trace, bool):
            raise TypeError(f"trace: expected a bool, got {trace!r}")
        if not isinstance(compile, bool):
            raise TypeError(f"compile: expected a bool, got {compile!r}")
        if trace and compile:
            raise ValueError("trace and compile: choose one (a TorchScript trace or torch.compile)")
        self.unet = unet
        self.schedule = schedule if schedule is not None else VPSchedule.linear()
        self.trace = trace
        self.compile_unet = compile  # (not .compile: torch.nn.Module.compile is a method)
        self._compiled_unet = CompiledLevel(unet, type(unet).__name__) if compile else None
        self._traced = {}  # (dtype, device) -> traced module, or None where tracing failed

    def _eager(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return model_output(self.unet(x, k))

    def _run_traced(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        key = (x.dtype, x.device)
        if key not in self._traced:
            self._traced[key] = _trace_unet(self, x, k)
        f = self._traced[key]
        return self._eager(x, k) if f is None else f(x, k)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        k = self.schedule.timestep(t).to(x.device)
        k = k.expand(x.shape[0]) if k.ndim == 0 else k
        if self.trace:
            return self._run_traced(x, k)
        if self.compile_unet:
            return model_output(self._compiled_unet(x, k))
        return self._eager(x, k)


class _SampleOf(torch.nn.Module):
    """``unet(x, k)`` returning a tensor (what ``torch.jit.trace`` records)."""

    def __init__(self, adapter: "DiffusersUNetAdapter"):
        super().__init__()
        self.unet = adapter.unet
        self._eager = adapter._eager

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return self._eager(x, k)


def _trace_unet(adapter: "DiffusersUNetAdapter", x: torch.Tensor, k: torch.Tensor):
    """A TorchScript trace of ``adapter``'s UNet on (x, k), checked against the eager forward; None (with a
    warning) where it cannot be traced or disagrees."""
    name = type(adapter.unet).__name__
    try:
        with warnings.catch_warnings():
            # torch.jit is marked deprecated in favour of torch.compile, which costs ~1 min per UNet on a
            # CPU here and did not run faster; the tracer's own warnings are about branches on sizes.
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(_SampleOf(adapter), (x, k), check_trace=False)
            with torch.no_grad():
                ok = torch.allclose(traced(x, k), adapter._eager(x, k), rtol=1e-4, atol=1e-5)
    except Exception as e:  # a model the tracer cannot record: stay eager
        warnings.warn(f"trace: {name} could not be traced ({type(e).__name__}: {e}); running it eagerly", stacklevel=3)
        return None
    if not ok:
        warnings.warn(f"trace: the traced {name} differs from its eager forward; running it eagerly", stacklevel=3)
        return None
    return traced


def _is_diffusers_model(m) -> bool:
    return isinstance(m, torch.nn.Module) and type(m).__module__.startswith("diffusers.")


def as_eps_model(model, schedule: Optional[VPSchedule] = None) -> EpsModel:
    """``model`` as a callable (x, t) -> eps: diffusers models get a :class:`DiffusersUNetAdapter`."""
    if _is_diffusers_model(model):
        return DiffusersUNetAdapter(model, schedule)
    if not callable(model):
        raise TypeError(f"expected a callable eps model (x, t) -> eps or a diffusers model, got {type(model).__name__}")
    return model


class _CompiledEps:
    """An eps model ``(x, t) -> eps`` run through ``torch.compile`` (:class:`~multilevel_em.engine.CompiledLevel`),
    its time given as a ``(batch,)`` tensor in x's dtype and device: a Python float would be specialised into
    the compiled graph (a new graph at every time)."""

    def __init__(self, model, name: str):
        self.model = model
        self._compiled = CompiledLevel(model, name)

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            t = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
        return self._compiled(x, t)

    def __repr__(self) -> str:
        return f"compiled({self.model!r})"


def compiled_eps_model(model, name: str = "level"):
    """``model`` (an eps model ``(x, t) -> eps``) run through ``torch.compile``: a diffusers UNet adapter compiles its
    UNet (timesteps computed outside the graph), any other model gets t as a ``(batch,)`` tensor."""
    if isinstance(model, DiffusersUNetAdapter):
        if model.compile_unet:
            return model
        if model.trace:
            raise ValueError(f"{name}: a traced adapter cannot also be compiled (trace and compile: choose one)")
        return DiffusersUNetAdapter(model.unet, model.schedule, compile=True)
    return _CompiledEps(model, name)


def _single_time(t) -> float:
    """t as one float: a number, a one-element tensor, or a (batch,) tensor of equal times."""
    return single_time(
        t,
        name="t",
        why="a MultilevelDenoiser draws its levels for one time per call; got a tensor of "
        "different times (call it once per time, as the samplers do)",
    )


class _LadderDenoiser:
    """Shared part: a ladder of eps models, cost accounting, the first-call shape check."""

    def __init__(self, models, costs, names, schedule):
        if isinstance(models, Ladder):
            costs = models.costs if costs is None else costs
            names = models.names if names is None else names
            models = list(models)
        elif callable(models) and not isinstance(models, (list, tuple, torch.nn.ModuleList)):
            raise TypeError(
                "models: expected a sequence of eps models (cheapest first), got a single model; wrap it as [model]"
            )
        models = [as_eps_model(m, schedule) for m in models]
        if costs is None:
            if len(models) != 1:
                raise ValueError(f"costs: expected {len(models)} costs (one per model, any unit), got None")
            costs = [1.0]
        self.ladder = Ladder(models, costs, names)
        self._probe_ladder = self.ladder  # what the first-call shape check runs (eager even when compiled)
        self._step_aware = [f for f in models if callable(getattr(f, "set_step", None))]
        self._caller: Optional[LevelEvaluator] = None
        self._h: Optional[float] = None
        self._index: Optional[int] = None
        self._steps: Optional[int] = None

    # --- accounting
    @property
    def costs(self) -> tuple:
        """Cost of one sample-evaluation of each level (the units given at construction)."""
        return self.ladder.costs

    @property
    def evaluations(self) -> tuple:
        """Sample-evaluations of each level since construction or :meth:`reset` (a row of a batch counts 1)."""
        return tuple(self._caller.evaluations) if self._caller is not None else (0,) * len(self.ladder)

    @property
    def total_cost(self) -> float:
        """Running total of the cost spent since construction or :meth:`reset`, sum_l evaluations_l * costs_l
        (the costs' units, all samples together)."""
        return float(sum(e * c for e, c in zip(self.evaluations, self.costs)))

    @property
    def cost(self) -> float:
        """Deprecated: :attr:`total_cost` (the running total, all samples together)."""
        warnings.warn(
            f"{type(self).__name__}.cost is deprecated; read .total_cost (the running total since reset)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.total_cost

    def reset(self) -> None:
        """Zero the evaluation counters."""
        if self._caller is not None:
            self._caller.evaluations = [0] * len(self.ladder)

    # --- sampler protocol
    def set_step(self, h: float, index: Optional[int] = None, steps: Optional[int] = None) -> None:
        """Tell the denoiser the step it is evaluated for: size h > 0 (continuous time), step index of steps."""
        h = float(h)
        if not (math.isfinite(h) and h >= 0):
            raise ValueError(f"h: expected a finite step size >= 0, got {h}")
        self._h, self._index, self._steps = h, index, steps
        for f in self._step_aware:
            f.set_step(h, index=index, steps=steps)

    # --- evaluation
    def _prepare(self, x: torch.Tensor, t) -> LevelEvaluator:
        if not isinstance(x, torch.Tensor) or x.ndim < 1:
            raise TypeError(f"x: expected a tensor of shape (batch, ...), got {type(x).__name__}")
        if self._caller is None:
            self._check_levels(x, t)
            self._caller = LevelEvaluator(self.ladder, x)
        return self._caller

    def _check_levels(self, x: torch.Tensor, t) -> None:
        """Run every level once on one row, so that a model of the wrong shape fails now, named."""
        x1 = x[:1]
        t1 = t[:1] if isinstance(t, torch.Tensor) and t.ndim == 1 else t
        for j, f in enumerate(self._probe_ladder):
            label = f"level {j + 1} ({self.ladder.names[j]})"
            version = tensor_version(x1)  # x1 is a view of the caller's x
            try:
                out = f(x1, t1)
            except FloatingPointError:  # a finiteness check inside the model already names the level
                raise
            except Exception as e:  # a model built for another input shape fails inside; name it
                raise ValueError(f"{label}: failed on an input of shape {tuple(x1.shape)}: {e}") from e
            if version is not None and x1._version != version:
                raise modified_input_error(label, "x", t1)
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"{label}: expected a Tensor output, got {type(out).__name__}")
            if out.shape != x1.shape:
                raise ValueError(
                    f"{label}: output shape {tuple(out.shape[1:])} differs from the input shape {tuple(x1.shape[1:])} "
                    "(per sample); every level must map x to an eps of x's shape"
                )


class MultilevelDenoiser(_LadderDenoiser):
    """The randomized telescoping estimate of the top model's eps, used like one eps model.

    ``denoiser(x, t)`` returns

        eps^1(x, t) + sum_{l=2..K} (B_l / p_l) (eps^l - eps^{l-1})(x, t),   B_l ~ Bernoulli(p_l),

    with p_l = min(1, lambda_l(t) h) and h the step size last given to :meth:`set_step`; its
    expectation over the draws is eps^K(x, t).  Each needed level ({1} and {l-1, l} for every
    fired l) runs once; with ``draws="per_sample"`` only on the rows that need it (the
    engine's ML-EM estimator, :mod:`multilevel_em.engine.solver`).

    Args:
        models: eps models cheapest first (callables ``(x, t) -> eps``, ``torch.nn.Module``, diffusers
            ``UNet2DModel``), or a :class:`~multilevel_em.Ladder` (which brings its costs and names).
        costs: cost of one sample-evaluation per model, nondecreasing, any unit.
        rates: lambda_2..lambda_K per unit of continuous time: numbers or callables of t (K - 1 of them).
        draws: ``"per_sample"`` (each row draws its own B's), ``"shared"`` (one draw per call),
            ``"exact"`` (floor(p B) + Bernoulli(frac(p B)) rows chosen at random fire: the same
            marginal law per row, rows mildly dependent; see :func:`multilevel_em.solve`) or
            ``"static"`` (per-sample draws made on the host: row b fires correction l with probability
            exactly p_l, independently of the other rows and levels, weighted 1 / p_l; each level runs on
            a sub-batch padded to a bucket size, so its batch sizes are ``bucket_sizes(batch, buckets)``
            and a call reads nothing back from the device when ``check_finite=False``).
        buckets: ``draws="static"`` only: the sub-batch sizes (ints >= 1); default the powers of two
            below the batch (at most 7) and the batch (:func:`~multilevel_em.engine.bucket_sizes`).
        compile: run every level through ``torch.compile`` (``dynamic=False``, one code object per level; on
            CUDA ``mode="reduce-overhead"``, CUDA graphs): needs fixed level batch sizes, i.e.
            ``draws="static"`` (or ``"shared"``) for K > 1. Each (level, bucket size) compiles once, on first
            use or in :meth:`warm_up`, and never again. A compiled level gets t as a ``(batch,)`` tensor in x's
            dtype (diffusers UNets through their adapter: the integer timestep, computed outside the graph).
        generator: for the Bernoulli draws (keep it apart from the sampler's noise generator to
            compare runs on the same noise); None uses torch's global generator; a list of
            generators (one per sample, ``draws="per_sample"`` or ``"static"``) draws row b from
            ``generator[b]``, so a sample's draws do not depend on the batch it is in. ``"static"`` draws on
            the host: CPU generators only (None: torch's default CPU generator).
        schedule: gives T to the adapter that wraps diffusers models.
        names: level names for messages.
        check_finite: raise ``FloatingPointError`` naming the level that produced NaN or Inf.

    Attributes ``evaluations``, ``total_cost``, ``costs`` and :meth:`reset` report the work done.
    On its first call every level runs once on one row (not counted) to check its output shape.
    Levels must not modify their input ``x`` in place (every level of a call gets the same ``x``,
    the caller's own): a level that does is named in a ``ValueError`` (:class:`~multilevel_em.Ladder`).
    """

    def __init__(
        self,
        models,
        *,
        costs: Optional[Sequence[float]] = None,
        rates: Optional[Sequence] = None,
        draws: str = "per_sample",
        generator: Optional[torch.Generator] = None,
        schedule: Optional[VPSchedule] = None,
        names: Optional[Sequence[str]] = None,
        check_finite: bool = True,
        buckets: Optional[Sequence[int]] = None,
        compile: bool = False,
    ):
        super().__init__(models, costs, names, schedule)
        K = len(self.ladder)
        if draws not in DRAWS:
            raise ValueError(f"draws: expected one of {', '.join(map(repr, DRAWS))}, got {draws!r}")
        check_generators(generator)
        if is_per_sample(generator) and draws not in ("per_sample", "static"):
            raise ValueError(f"generator: a list of per-sample generators needs draws='per_sample', got {draws!r}")
        self.buckets = check_buckets(buckets, draws)
        if not isinstance(compile, bool):
            raise TypeError(f"compile: expected a bool, got {compile!r}")
        if compile and K > 1 and draws not in ("static", "shared"):
            raise ValueError(
                f"compile: a compiled level needs a few fixed batch sizes, but draws={draws!r} gives every call its "
                "own sub-batch sizes (a recompilation each); use draws='static' (or 'shared')"
            )
        self.rates = [] if rates is None and K == 1 else check_rates(rates, K, 1.0)
        self.draws = draws
        self.generator = generator
        self.check_finite = check_finite
        self.compile_levels = compile
        if compile:
            names = self.ladder.names
            levels = [compiled_eps_model(f, f"level_{j + 1}_{names[j]}") for j, f in enumerate(self.ladder)]
            self.ladder = Ladder(levels, self.ladder.costs, names)

    def probabilities(self, t: float, h: Optional[float] = None) -> list:
        """p_2..p_K = min(1, lambda_l(t) h) at time t (h: the last step size given)."""
        h = self._h if h is None else h
        if h is None:
            raise RuntimeError(
                "MultilevelDenoiser: the step size h is unknown; samplers call set_step(h) before each "
                "evaluation: call denoiser.set_step(h) yourself when you use it directly"
            )
        return firing_probabilities(self.rates, t, h)

    def level_batch_sizes(self, batch: int) -> tuple:
        """The batch sizes this denoiser's levels run on for a batch of ``batch`` rows: every size for
        ``draws="static"`` (:func:`~multilevel_em.engine.bucket_sizes`), ``(batch,)`` for ``"shared"`` or one level;
        None for per-sample and exact draws (any size up to ``batch``)."""
        if len(self.ladder) == 1 or self.draws == "shared":
            return (batch,)
        if self.draws == "static":
            return bucket_sizes(batch, self.buckets)
        return None

    @torch.no_grad()
    def warm_up(self, x: torch.Tensor, t: float = 0.5) -> None:
        """Run every level once at every batch size it can take for x's batch (:meth:`level_batch_sizes`), not
        counted: with ``compile=True`` this compiles each (level, size), so that sampling compiles nothing.

        Args:
            x: a batch like the ones sampling will pass, shape ``(batch, ...)`` (its values do not matter).
            t: a time in [0, 1] (the compiled graphs do not depend on it).
        """
        sizes = self.level_batch_sizes(x.shape[0])
        if sizes is None:
            raise ValueError(f"warm_up: draws={self.draws!r} gives a level any batch size; use draws='static'")
        if self.compile_levels:
            check_compile_buckets(sizes)
        for j, f in enumerate(self.ladder):
            for m in sizes if j > 0 else (x.shape[0],):
                f(x[:1].expand(m, *x.shape[1:]).contiguous() if m > x.shape[0] else x[:m], float(t))

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        call = self._prepare(x, t)
        if len(self.ladder) == 1:
            out = call(0, x, t)
            if self.check_finite and not all_finite(out):
                raise non_finite_error(call, {0: out}, _single_time(t))
            return out
        t = _single_time(t)
        if self.compile_levels and self.draws == "static":
            check_compile_buckets(bucket_sizes(x.shape[0], self.buckets))
        return telescoping_estimate(
            call,
            x,
            t,
            self.probabilities(t),
            draws=self.draws,
            generator=self.generator,
            check_finite=self.check_finite,
            buckets=self.buckets,
        )

    def __repr__(self) -> str:
        extra = ", compile=True" if self.compile_levels else ""
        return f"MultilevelDenoiser({self.ladder!r}, draws={self.draws!r}{extra})"


class TStitchDenoiser(_LadderDenoiser):
    """T-Stitch (Pan et al. 2024): model i for its fraction of the steps, cheapest first, the last for the rest.

    With ``fractions = [0.4]`` and 10 steps, ``models[0]`` runs steps 0..3 (the noisiest) and
    ``models[1]`` steps 4..9.  Step n of N uses model i for
    round(N * sum(fractions[:i])) <= n < round(N * sum(fractions[:i+1])) (halves rounded up).
    A biased baseline: early errors of the small model are never corrected.

    Args:
        models: K eps models cheapest first, or a :class:`~multilevel_em.Ladder`.
        fractions: K - 1 fractions in [0, 1] of the steps for models[0..K-2], summing to <= 1.
        costs: cost per sample-evaluation of each model; defaults to all 1 for a plain list
            (pass a Ladder or costs to get costs in top-level equivalents).
    """

    def __init__(self, models, fractions: Sequence[float], *, costs=None, schedule=None, names=None):
        if costs is None and not isinstance(models, Ladder):
            costs = [1.0] * len(models)
        super().__init__(models, costs, names, schedule)
        K = len(self.ladder)
        try:
            fractions = [float(f) for f in fractions]
        except (TypeError, ValueError):
            raise TypeError(f"fractions: expected a sequence of {K - 1} numbers, got {fractions!r}") from None
        if len(fractions) != K - 1:
            raise ValueError(
                f"fractions: expected {K - 1} fractions (one for each model but the last), got {len(fractions)}"
            )
        if any(not (0 <= f <= 1) for f in fractions) or sum(fractions) > 1 + 1e-12:
            raise ValueError(f"fractions: expected numbers in [0, 1] summing to at most 1, got {fractions}")
        self.fractions = fractions

    def level_for_step(self, index: int, steps: int) -> int:
        """The 0-based model used at step ``index`` of ``steps``."""
        acc, j = 0.0, 0
        for f in self.fractions:
            acc += f
            if index < math.floor(steps * acc + 0.5):
                return j
            j += 1
        return j

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        call = self._prepare(x, t)
        if self._index is None or self._steps is None:
            raise RuntimeError(
                "TStitchDenoiser: the step index is unknown; samplers call set_step(h, index, steps) before each "
                "evaluation: call it yourself when you use the denoiser directly"
            )
        j = self.level_for_step(self._index, self._steps)
        out = call(j, x, t)
        if not all_finite(out):
            raise non_finite_error(call, {j: out}, _single_time(t))
        return out

    def __repr__(self) -> str:
        return f"TStitchDenoiser({self.ladder!r}, fractions={self.fractions})"

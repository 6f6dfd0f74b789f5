"""The one list of samplers and sampling methods: every name, and what each needs.

A *sampler* is one loop over a denoiser (:func:`multilevel_em.diffusion.sample`); a *method* is
what :class:`~multilevel_em.images.MultilevelPipeline` (and ``mlem sample``) runs: every sampler
with the top model alone, plus the methods that are not samplers ("mlem", "stitch", "auto").
Everything that lists samplers reads them from here: ``sample``'s checks and options, the
diffusers scheduler behind a name, the pipeline's methods and default steps, which samplers
calibration can measure, the samplers distillation may draw teacher samples with, the jobs'
methods, the command line's choices, the benchmarks' labels and plot styles.

Adding a sampler is one loop function in :mod:`multilevel_em.diffusion.samplers` (or a diffusers
scheduler, driven by the shared scheduler loop) plus one :class:`SamplerSpec` in ``_SAMPLER_SPECS``.

This module is plain data (no torch), so that the command line can build its choices from it
without loading torch; loops and scheduler classes are named by strings and resolved on use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Dict, FrozenSet, Mapping, Optional, Tuple

__all__ = [
    "SamplerSpec",
    "MethodSpec",
    "SAMPLER_SPECS",
    "METHOD_SPECS",
    "SAMPLERS",
    "METHODS",
    "DEFAULT_STEPS",
    "sampler_spec",
    "method_spec",
    "measurable_samplers",
    "teacher_samplers",
    "scheduler_samplers",
    "schedule_samplers",
    "family",
    "label",
    "title",
    "style",
]

#: Options every sampler takes (see :func:`multilevel_em.diffusion.sample`).
COMMON_OPTIONS = frozenset({"stitch", "clip_sample", "thresholding", "guidance_rescale", "force"})


def _frozen(d: Optional[Mapping] = None) -> Mapping:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler: a loop that evaluates the denoiser once per step, each step affine in its output.

    Attributes:
        name: what users type (``sample(..., sampler=name)``, ``mlem sample --method name``).
        family: ``"sde"`` (it integrates the reverse SDE and draws noise) or ``"ode"`` (the
            probability-flow ODE, deterministic given x_T).
        default_steps: the pipeline's step count when neither steps nor a budget is given.
        loop: the loop function, ``"module:function"``; it is called as
            ``loop(model, x_T, schedule, steps, spec=spec, generator=..., t_min=..., overrides=..., opts=...)``
            and returns ``(x_0, times)`` (see :func:`multilevel_em.diffusion.samplers.scheduler_loop`).
        options: the options of ``sample(**opts)`` this sampler takes besides :data:`COMMON_OPTIONS`.
        scheduler: the diffusers scheduler class the loop drives (None for loops written here).
        scheduler_config: the settings that make that scheduler this sampler (e.g. DPM-Solver++'s
            ``algorithm_type`` and ``solver_order``), added to the schedule's betas.
        measurable: whether calibration can measure its step-error curve pathwise (runs with
            different step counts must share their noise; DDPM's scheduler draws fresh noise).
        teacher: whether distillation may draw a teacher's data-free samples with it.
        conditional: the scheduler sampler a conditional ladder (which is sampled through a
            diffusers scheduler) runs for this name; "em" runs DDPM there. None: no such use.
        label: short display name (a benchmark run "DPM++ 10").
        title: long display name (a plot legend "DPM-Solver++ 2M").
        style: matplotlib (colour, marker) of its curve in the benchmark plots.
        mlem_title, mlem_style: the legend and style of ML-EM run inside this sampler (None: not plotted).
    """

    name: str
    family: str
    default_steps: int
    loop: str
    options: FrozenSet[str] = frozenset()
    scheduler: Optional[str] = None
    scheduler_config: Mapping = field(default_factory=_frozen)
    measurable: bool = True
    teacher: bool = False
    conditional: Optional[str] = None
    label: str = ""
    title: str = ""
    style: Tuple[str, str] = ("k", "o")
    mlem_title: Optional[str] = None
    mlem_style: Optional[Tuple[str, str]] = None

    def loop_function(self) -> Callable:
        """The loop, imported on first use."""
        module, _, name = self.loop.partition(":")
        return getattr(importlib.import_module(module), name)

    def scheduler_class(self):
        """The diffusers scheduler class (ImportError naming the extra when diffusers is missing)."""
        if self.scheduler is None:
            raise ValueError(f"sampler: {self.name!r} does not use a diffusers scheduler")
        try:
            import diffusers
        except ImportError as e:  # pragma: no cover - exercised only without the extra
            raise ImportError(
                f"sampler {self.name!r} drives a diffusers scheduler: pip install 'multilevel-em[diffusion]'"
            ) from e
        return getattr(diffusers, self.scheduler)


@dataclass(frozen=True)
class MethodSpec:
    """A pipeline method that is not one sampler with the top model.

    Attributes:
        name: what users type (``pipe(method=name)``, ``mlem sample --method name``).
        default_sampler: the loop it runs when ``sampler=`` is not given (None: it chooses).
        default_steps: its step count when neither steps nor a budget is given (None: planned).
        label, title: display names (see :class:`SamplerSpec`); style: its plot (colour, marker).
    """

    name: str
    default_sampler: Optional[str] = None
    default_steps: Optional[int] = None
    label: str = ""
    title: str = ""
    style: Tuple[str, str] = ("k", "o")


_LOOPS = "multilevel_em.diffusion.samplers"

_SAMPLER_SPECS = (
    SamplerSpec(
        "em",
        "sde",
        250,
        f"{_LOOPS}:em_loop",
        options=frozenset({"noise"}),
        teacher=True,
        conditional="ddpm",
        label="EM-top",
        title="EM-top",
        style=("C0", "o"),
        mlem_title="ML-EM in EM",
        mlem_style=("C3", "s"),
    ),
    SamplerSpec(
        "ddpm",
        "sde",
        250,
        f"{_LOOPS}:scheduler_loop",
        options=frozenset({"scheduler_config"}),
        scheduler="DDPMScheduler",
        scheduler_config=_frozen({"clip_sample": False}),
        measurable=False,
        label="DDPM",
        title="DDPM",
        style=("C1", "v"),
        mlem_title="ML-EM in DDPM (EM plan)",
        mlem_style=("saddlebrown", "s"),
    ),
    SamplerSpec(
        "ddim",
        "ode",
        50,
        f"{_LOOPS}:scheduler_loop",
        options=frozenset({"scheduler_config", "eta", "noise"}),
        scheduler="DDIMScheduler",
        scheduler_config=_frozen({"clip_sample": False}),
        teacher=True,
        conditional="ddim",
        label="DDIM",
        title="DDIM",
        style=("C2", "^"),
        mlem_title="ML-EM in DDIM",
        mlem_style=("C9", "s"),
    ),
    SamplerSpec(
        "euler_ode", "ode", 100, f"{_LOOPS}:euler_ode_loop", label="Euler-ODE", title="Euler ODE", style=("C5", "P")
    ),
    SamplerSpec(
        "dpmpp_2m",
        "ode",
        20,
        f"{_LOOPS}:scheduler_loop",
        options=frozenset({"scheduler_config"}),
        scheduler="DPMSolverMultistepScheduler",
        scheduler_config=_frozen({"algorithm_type": "dpmsolver++", "solver_order": 2}),
        teacher=True,
        conditional="dpmpp_2m",
        label="DPM++",
        title="DPM-Solver++ 2M",
        style=("C4", "D"),
        mlem_title="ML-EM in DPM++",
        mlem_style=("C6", "s"),
    ),
    SamplerSpec(
        "dpmpp_sde",
        "sde",
        25,
        f"{_LOOPS}:scheduler_loop",
        options=frozenset({"scheduler_config", "noise"}),
        scheduler="DPMSolverMultistepScheduler",
        scheduler_config=_frozen({"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
        measurable=False,
        conditional="dpmpp_sde",
        label="DPM++ SDE",
        title="DPM-Solver++ 2M SDE",
        style=("tab:olive", "h"),
        mlem_title="ML-EM in DPM++ SDE (EM plan)",
        mlem_style=("darkolivegreen", "s"),
    ),
    SamplerSpec(
        "unipc",
        "ode",
        20,
        f"{_LOOPS}:scheduler_loop",
        options=frozenset({"scheduler_config"}),
        scheduler="UniPCMultistepScheduler",
        scheduler_config=_frozen({"predict_x0": True, "solver_order": 2, "solver_type": "bh2"}),
        teacher=True,
        conditional="unipc",
        label="UniPC",
        title="UniPC (bh2, order 2)",
        style=("navy", "p"),
        mlem_title="ML-EM in UniPC",
        mlem_style=("magenta", "s"),
    ),
)

_METHOD_SPECS = (
    MethodSpec("mlem", default_sampler="em", label="ML-EM", title="ML-EM"),
    MethodSpec(
        "stitch", default_sampler="ddim", default_steps=50, label="T-Stitch", title="T-Stitch (DDIM)", style=("C7", "X")
    ),
    MethodSpec("auto", label="auto", title="auto"),
)

#: Every sampler by name, in the order users see them.
SAMPLER_SPECS: Mapping[str, SamplerSpec] = MappingProxyType({s.name: s for s in _SAMPLER_SPECS})
#: The pipeline methods that are not single samplers, by name.
METHOD_SPECS: Mapping[str, MethodSpec] = MappingProxyType({m.name: m for m in _METHOD_SPECS})

#: The samplers' names (``sample(..., sampler=...)``).
SAMPLERS: Tuple[str, ...] = tuple(SAMPLER_SPECS)
#: The pipeline's methods: "mlem", every sampler (the top model alone), "stitch", "auto".
METHODS: Tuple[str, ...] = ("mlem",) + SAMPLERS + ("stitch", "auto")
#: Default step count of each method that has one.
DEFAULT_STEPS: Mapping[str, int] = MappingProxyType(
    {
        **{s.name: s.default_steps for s in _SAMPLER_SPECS},
        **{m.name: m.default_steps for m in _METHOD_SPECS if m.default_steps is not None},
    }
)


def sampler_spec(name: str) -> SamplerSpec:
    """The :class:`SamplerSpec` of ``name`` (ValueError listing the samplers otherwise)."""
    try:
        return SAMPLER_SPECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"sampler: expected one of {', '.join(map(repr, SAMPLERS))}, got {name!r}") from None


def method_spec(name: str):
    """The spec of a pipeline method: a :class:`SamplerSpec` or a :class:`MethodSpec` (ValueError otherwise)."""
    if name in SAMPLER_SPECS:
        return SAMPLER_SPECS[name]
    if name in METHOD_SPECS:
        return METHOD_SPECS[name]
    raise ValueError(f"method: expected one of {', '.join(map(repr, METHODS))}, got {name!r}")


def measurable_samplers() -> Dict[str, str]:
    """``{name: family}`` of the samplers calibration can measure, in registry order."""
    return {s.name: s.family for s in _SAMPLER_SPECS if s.measurable}


def teacher_samplers() -> Tuple[str, ...]:
    """The samplers distillation may draw a teacher's data-free samples with."""
    return tuple(s.name for s in _SAMPLER_SPECS if s.teacher)


def scheduler_samplers() -> Tuple[str, ...]:
    """The samplers that drive a diffusers scheduler."""
    return tuple(s.name for s in _SAMPLER_SPECS if s.scheduler is not None)


def schedule_samplers() -> Tuple[str, ...]:
    """The samplers a schedule of models can be planned in from fixed noise (the schedule planner): those
    that drive a diffusers scheduler deterministically (the "ode" family), one model call per timestep."""
    return tuple(s.name for s in _SAMPLER_SPECS if s.scheduler is not None and s.family == "ode")


def family(name: str) -> Optional[str]:
    """ "sde" or "ode" for a sampler, None for a name that is not one."""
    spec = SAMPLER_SPECS.get(name)
    return None if spec is None else spec.family


def _display(key: str) -> Optional[Tuple]:
    """The spec behind a display key: a method name or ``"mlem:SAMPLER"`` (ML-EM inside that sampler)."""
    if key.startswith("mlem:") and key[5:] in SAMPLER_SPECS:
        return ("mlem", SAMPLER_SPECS[key[5:]])
    if key in SAMPLER_SPECS:
        return ("one", SAMPLER_SPECS[key])
    if key in METHOD_SPECS:
        return ("one", METHOD_SPECS[key])
    return None


def label(key: str) -> str:
    """The short display name of a method (``key`` itself when unknown)."""
    found = _display(key)
    return key if found is None or found[0] == "mlem" else found[1].label


def title(key: str) -> str:
    """The long display name (legend) of a method or of ``"mlem:SAMPLER"`` (``key`` itself when unknown)."""
    found = _display(key)
    if found is None:
        return key
    kind, spec = found
    return (spec.mlem_title or key) if kind == "mlem" else spec.title


def style(key: str, default: Tuple[str, str] = ("k", "o")) -> Tuple[str, str]:
    """The plot (colour, marker) of a method or of ``"mlem:SAMPLER"``; ``default`` when it has none."""
    found = _display(key)
    if found is None:
        return default
    kind, spec = found
    if kind == "mlem":
        return spec.mlem_style or default
    return spec.style

"""A ladder from one model: distill narrower students of a teacher UNet, the teacher on top.

Each student has the teacher's architecture with ``block_out_channels`` scaled by
``width / teacher_width`` (same sample size, channels, layers, norm groups, schedule and
prediction type) and regresses the teacher's output on noised inputs
``x_t = alpha(t) x_0 + sigma(t) eps`` at random timesteps: the loss is
``|student(x_t, k) - teacher(x_t, k)|^2`` instead of the DDPM loss ``|eps_model(x_t, k) - eps|^2``.
Everything else is :func:`~multilevel_em.images.train.train_ladder`'s (same draws, AdamW, EMA,
resumable safetensors checkpoints, loss plot); this module only supplies the
:class:`~multilevel_em.images.train.Objective`.

Two sources of ``x_0``: a data set (:class:`~multilevel_em.images.data.ImageData`), or data-free:
``n`` samples of the teacher itself, generated once with a chosen sampler and cached in
``OUT/teacher_samples.safetensors`` (a resumed run reuses them; other sampler settings are refused).

The output folder is a ladder (``level_1 .. level_K`` students, ``level_{K+1}`` the teacher) that
:meth:`MultilevelPipeline.from_pretrained` loads, with FLOPs per sample counted on every level.

Conditional teachers (``UNet2DConditionModel``): the students keep everything of the teacher's
config but ``block_out_channels`` (``cross_attention_dim``, attention heads, class embedding
unchanged) and see, for each training example, the same conditioning row as the teacher: a row
of a :class:`~multilevel_em.images.conditioning.Conditioning` file drawn at random (with data), or
the row the teacher sample was generated with (data-free: sample i uses row i mod N). With
``uncond_prob > 0`` an example uses the file's unconditional row instead, with that probability
(for teachers trained for classifier-free guidance). The ladder folder loads with
:func:`~multilevel_em.images.load_ladder` and is sampled with
:class:`~multilevel_em.diffusion.MultilevelModel` (:func:`.conditioning.sample_ladder`);
``MultilevelPipeline`` refuses it.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import Callable, Dict, Optional, Sequence

import torch

from ..diffusion import VPSchedule
from ..diffusion.registry import SAMPLER_SPECS, teacher_samplers
from .conditioning import Conditioning, is_conditional, sample_ladder, teacher_rows
from .data import ImageData
from .ladder import (
    FORMAT,
    INDEX,
    UNET_CONFIG,
    WEIGHTS,
    UNetLadder,
    load_ladder,
    load_tensors,
    load_unet,
    read_json,
    save_level,
    save_tensors,
    unet_flops,
)
from .train import Objective, train_ladder

__all__ = [
    "Teacher",
    "Distillation",
    "load_teacher",
    "student_config",
    "teacher_samples",
    "distill_ladder",
    "SAMPLES_FILE",
]

SAMPLES_FILE = "teacher_samples.safetensors"
#: Samplers the data-free mode may draw the teacher's samples with (one-model methods of MultilevelPipeline).
SAMPLERS = teacher_samplers()


class Teacher:
    """The model students imitate.

    Attributes:
        unet: a diffusers ``UNet2DModel`` or ``UNet2DConditionModel`` in eval mode.
        schedule: its VP schedule.
        conditioning: the :class:`~multilevel_em.images.conditioning.Conditioning` rows a conditional
            teacher is run with (None for an unconditional one).
        width: ``block_out_channels[0]``.
        cost: FLOPs per sample of one forward pass (on one conditioning row's shapes).
        fingerprint: sha256 of its weights file (a resumed distillation must have the same teacher).
        source: the folder it was read from.
    """

    def __init__(
        self, unet, schedule: VPSchedule, fingerprint: str, source: str, conditioning: Optional[Conditioning] = None
    ):
        self.unet, self.schedule, self.fingerprint, self.source = unet.eval(), schedule, fingerprint, source
        self.conditioning = conditioning
        self.width = int(unet.config.block_out_channels[0])
        self.sample_size, self.channels = int(unet.config.sample_size), int(unet.config.in_channels)
        self.cost = unet_flops(unet, self.sample_size, self.channels, self.conditioning_spec)

    @property
    def conditional(self) -> bool:
        return is_conditional(self.unet)

    @property
    def conditioning_spec(self) -> Optional[Dict]:
        return self.conditioning.spec if self.conditioning is not None else None

    @property
    def model_class(self):
        import diffusers

        return getattr(diffusers, type(self.unet).__name__)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _plain_schedule(path: str) -> VPSchedule:
    """A plain diffusers model folder's schedule: its ``scheduler_config.json`` (in the folder, or in
    ``../scheduler/`` of a pipeline layout) when there is one, else diffusers' default linear DDPM
    schedule, with a warning (the students would be trained on that schedule's x_t)."""
    for cand in (
        os.path.join(path, "scheduler_config.json"),
        os.path.join(os.path.dirname(os.path.abspath(path)), "scheduler", "scheduler_config.json"),
    ):
        if os.path.isfile(cand):
            try:
                return VPSchedule.from_diffusers(read_json(cand))
            except (ValueError, TypeError) as e:
                raise ValueError(f"teacher: {cand}: {e}") from None
    warnings.warn(
        f'teacher: {path} stores no noise schedule (no "_mlem" in config.json, no scheduler_config.json '
        "beside it); assuming diffusers' default linear DDPM schedule (beta 1e-4 .. 0.02, 1000 steps). "
        "Put the teacher's scheduler_config.json in its folder if it was trained with another",
        stacklevel=3,
    )
    return VPSchedule.linear()


def load_teacher(path: str, conditioning: Optional[Conditioning] = None) -> Teacher:
    """A ladder folder (its top level teaches) or one diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` folder.

    A model folder written by multilevel_em carries its schedule (``"_mlem"`` in ``config.json``);
    a plain diffusers folder reads ``scheduler_config.json`` (:func:`_plain_schedule`), else gets
    diffusers' default linear DDPM schedule (``VPSchedule.linear()``) with a warning.
    ``conditioning`` is required for a conditional teacher and refused for an unconditional one.
    Raises ValueError naming ``teacher`` (or ``conditioning``) for anything else.
    """
    path = os.fspath(path)
    index_path, cfg_path = os.path.join(path, INDEX), os.path.join(path, UNET_CONFIG)
    if not os.path.isdir(path):
        raise ValueError(f"teacher: {path} is not a folder")
    if os.path.isfile(index_path):
        index = read_json(index_path)
        if index.get("format") != FORMAT:
            raise ValueError(
                f'teacher: {index_path} is not a multilevel_em ladder (no "format": "{FORMAT}"); '
                "give a ladder folder or one diffusers UNet2DModel / UNet2DConditionModel folder"
            )
        ladder = load_ladder(path)
        top = os.path.join(path, index["levels"][-1])
        unet, schedule, fingerprint = ladder.unets[-1], ladder.schedule, _sha256(os.path.join(top, WEIGHTS))
    elif not os.path.isfile(cfg_path):
        raise ValueError(
            f"teacher: {path} is neither a ladder folder ({INDEX}) nor a diffusers model folder "
            f"({UNET_CONFIG} + {WEIGHTS})"
        )
    else:
        config = read_json(cfg_path)
        name = config.get("_class_name")
        if name not in ("UNet2DModel", "UNet2DConditionModel"):
            raise ValueError(
                f"teacher: {cfg_path} describes a {name!r}; only UNet2DModel and UNet2DConditionModel "
                "teachers are supported"
            )
        if "_mlem" in config:
            unet, _, _, schedule = load_unet(path)
        else:
            import diffusers

            try:
                unet = getattr(diffusers, name).from_pretrained(path)
            except Exception as e:  # diffusers raises OSError / ValueError / EnvironmentError on bad folders
                raise ValueError(f"teacher: {path} does not load as a {name}: {e}") from None
            schedule = _plain_schedule(path)
        weights = os.path.join(path, WEIGHTS)
        fingerprint = _sha256(weights) if os.path.isfile(weights) else ""
    if is_conditional(unet):
        if conditioning is None:
            raise ValueError(
                f"conditioning: the teacher {path} is a UNet2DConditionModel; give a conditioning file "
                "(safetensors: 'encoder_hidden_states' (N, seq, "
                f"{unet.config.cross_attention_dim}) and/or 'class_labels' (N,))"
            )
        conditioning.check_for(unet)
    elif conditioning is not None:
        raise ValueError(
            f"conditioning: the teacher {path} is an unconditional {type(unet).__name__}; it takes no "
            f"conditioning ({conditioning.source}); drop the conditioning file"
        )
    return Teacher(unet, schedule, fingerprint, path, conditioning)


def student_config(teacher_config, width: int) -> Dict:
    """The teacher's config with ``block_out_channels`` scaled by ``width / teacher_width``.

    Raises ValueError naming ``widths`` when the width is not smaller than the teacher's, does not
    scale every block to whole channels, or is not divisible by the group norm's group count.
    """
    config = {k: v for k, v in dict(teacher_config).items() if not k.startswith("_")}
    channels = [int(c) for c in config["block_out_channels"]]
    tw, groups = channels[0], int(config.get("norm_num_groups") or 32)
    if isinstance(width, bool) or not isinstance(width, int) or not 0 < width < tw:
        raise ValueError(
            f"widths: expected ints smaller than the teacher's width {tw} "
            f"(block_out_channels {tuple(channels)}), got {width!r}"
        )
    if any(c * width % tw for c in channels):
        raise ValueError(
            f"widths: width {width} scales the teacher's block_out_channels {tuple(channels)} to "
            "fractional channels; choose a width that divides them evenly"
        )
    scaled = [c * width // tw for c in channels]
    if any(c % groups for c in scaled):
        raise ValueError(
            f"widths: width {width} gives block_out_channels {tuple(scaled)}, not divisible by the "
            f"group norm's norm_num_groups = {groups}; choose a multiple of {groups}"
        )
    config["block_out_channels"] = scaled
    return config


class Distillation(Objective):
    """Students of the teacher's architecture regressing the teacher's output (module docstring).

    Args:
        teacher: from :func:`load_teacher`.
        x0_source: the name of the x_0 data (stored; a resumed run must match).
        uncond_prob: conditional teachers: probability that an example uses the conditioning
            file's unconditional row (0: never; > 0 needs one in the file).
        rows: conditional teachers: the conditioning row of each x_0 ``(n,)`` int64 (data-free:
            the row each teacher sample was generated with); None: a row drawn at random per example.
    """

    def __init__(self, teacher: Teacher, x0_source: str, uncond_prob: float = 0.0, rows: Optional[torch.Tensor] = None):
        self.teacher, self.x0_source = teacher, x0_source
        self.uncond_prob, self.rows = float(uncond_prob), rows
        cond = teacher.conditioning
        if not 0 <= self.uncond_prob <= 1:
            raise ValueError(f"uncond_prob: expected a probability in [0, 1], got {uncond_prob}")
        if self.uncond_prob > 0 and (cond is None or not cond.has_uncond):
            where = (
                "the teacher is unconditional"
                if cond is None
                else (
                    f"{cond.source} has no unconditional row ('uncond_encoder_hidden_states' (seq, dim)"
                    + (" and 'uncond_class_labels' ()" if cond.class_labels is not None else "")
                    + ")"
                )
            )
            raise ValueError(f"uncond_prob: {self.uncond_prob} > 0, but {where}")
        self.conditioning_spec = teacher.conditioning_spec

    def build(self, width: int, **shapes):
        return self.teacher.model_class.from_config(student_config(self.teacher.unet.config, width))

    def target(self, xt, k, eps, **conditioning):
        with torch.no_grad():  # the teacher is fixed; no graph through it
            out = self.teacher.unet(xt, k, **conditioning).sample
        if not bool(torch.isfinite(out).all()):  # a broken teacher, not a learning rate, would make the loss NaN
            bad = sorted({int(v) for v in k[~torch.isfinite(out).flatten(1).all(1)].tolist()})[:5]
            raise ValueError(
                f"teacher: {self.teacher.source} outputs NaN or Inf (at timesteps {bad} of this batch); "
                "it cannot teach. Check the teacher's weights"
            )
        return out

    def draw_conditioning(self, idx, generator):
        cond = self.teacher.conditioning
        if cond is None:
            return {}
        rows = self.rows[idx] if self.rows is not None else torch.randint(0, cond.n, idx.shape, generator=generator)
        uncond = torch.rand(idx.shape, generator=generator) < self.uncond_prob if self.uncond_prob > 0 else None
        return cond.rows(rows, uncond)

    files = (SAMPLES_FILE,)

    def settings(self) -> Dict:
        out = {"objective": "distill", "teacher_sha256": self.teacher.fingerprint, "x0": self.x0_source}
        cond = self.teacher.conditioning
        if cond is not None:  # unconditional runs keep the settings they had before conditioning existed
            out.update(
                conditioning_sha256=cond.fingerprint, uncond_prob=self.uncond_prob, paired_rows=self.rows is not None
            )
        return out


def check_students(teacher: Teacher, widths: Sequence[int]) -> None:
    """Build every student and run it once (ValueError naming ``widths`` if the architecture cannot)."""
    ws = list(widths)
    if not ws or any(b < a for a, b in zip(ws, ws[1:])):
        raise ValueError(f"widths: expected nondecreasing widths, cheapest first, got {ws}")
    for w in ws:
        config = student_config(teacher.unet.config, w)
        try:  # one forward: attention heads, group norms and skip shapes only fail when run
            unet_flops(
                teacher.model_class.from_config(config),
                teacher.sample_size,
                teacher.channels,
                teacher.conditioning_spec,
            )
        except Exception as e:  # diffusers / torch raise ValueError, RuntimeError, ... for impossible shapes
            raise ValueError(
                f"widths: width {w} (block_out_channels {tuple(config['block_out_channels'])}) does not "
                f"build: {type(e).__name__}: {e}"
            ) from None


def check_out(out: str, x0_source: str, teacher: Teacher, uncond_prob: float = 0.0, paired_rows: bool = False) -> None:
    """``out`` must be absent, empty, or a distillation of this teacher from the same x_0 (ValueError naming ``out``)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"out: {out} exists and is not a folder")
    if not os.path.isdir(out) or not set(os.listdir(out)) - {SAMPLES_FILE}:
        return
    index_path = os.path.join(out, INDEX)
    if not os.path.isfile(index_path):
        raise ValueError(f"out: {out} is not empty and holds no {INDEX}; refusing to write into it")
    training = read_json(index_path).get("training", {})
    rows = torch.zeros(1, dtype=torch.int64) if paired_rows else None
    want = Distillation(teacher, x0_source, uncond_prob, rows).settings()
    diff = {k: (training.get(k), v) for k, v in want.items() if training.get(k) != v}
    if diff:
        details = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
        raise ValueError(
            f"out: {out} holds something else ({details}); resume with the same teacher and data "
            "or choose another --out"
        )


def samples_name(sampler: str, steps: int, n: int, seed: int) -> str:
    """How data-free x_0 are named in the ladder's settings (a resumed run must match it)."""
    return f"teacher samples ({sampler}, {steps} steps, n={n}, seed {seed})"


#: Data-free samples of a conditional teacher: our sampler names -> the diffusers scheduler run (sample_ladder).
CONDITIONAL_SCHEDULERS = {name: SAMPLER_SPECS[name].conditional for name in SAMPLERS}


def _generate(teacher: Teacher, start: int, stop: int, sampler: str, steps: int, seed: int) -> torch.Tensor:
    """Teacher samples start..stop-1, sample i's randomness keyed by (seed, i)."""
    from ..engine import sample_generators
    from .pipeline import MultilevelPipeline

    gens = sample_generators(seed, range(start, stop))
    one = UNetLadder(
        [teacher.unet],
        [teacher.width],
        [teacher.cost],
        teacher.schedule,
        {"conditioning": teacher.conditioning_spec} if teacher.conditional else None,
    )
    try:
        if not teacher.conditional:
            return MultilevelPipeline(one)(stop - start, method=sampler, steps=steps, generator=gens).x
        rows = torch.tensor(teacher_rows(stop, teacher.conditioning)[start:stop], dtype=torch.int64)
        return sample_ladder(
            one, teacher.conditioning.rows(rows), steps=steps, sampler=CONDITIONAL_SCHEDULERS[sampler], generator=gens
        ).x
    except FloatingPointError:  # the samplers' own finite checks: the teacher's output went NaN or Inf
        raise ValueError(
            f"teacher: {teacher.source} outputs NaN or Inf while generating its {sampler} samples; "
            "it cannot teach data-free. Check the teacher's weights"
        ) from None


def teacher_samples(
    teacher: Teacher,
    out: str,
    n: int,
    *,
    sampler: str = "dpmpp_2m",
    steps: int = 20,
    seed: int = 0,
    batch: int = 256,
    progress: Optional[Callable[[int], None]] = None,
) -> ImageData:
    """``n`` samples of the teacher (clipped to [-1, 1]), generated once and cached in ``out/SAMPLES_FILE``.

    Sample i's randomness is keyed by (seed, i), so the cache does not depend on ``batch``. A
    conditional teacher generates sample i with conditioning row i mod N
    (:func:`~multilevel_em.images.conditioning.teacher_rows`), through a diffusers scheduler
    (``CONDITIONAL_SCHEDULERS``: "em" runs DDPM). A cache made with other settings is refused
    (ValueError naming ``out``).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {', '.join(SAMPLERS)}, got {sampler!r}")
    for name, v in (("samples", n), ("sampler_steps", steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
    meta = {
        "sampler": sampler,
        "steps": str(steps),
        "n": str(n),
        "seed": str(seed),
        "teacher_sha256": teacher.fingerprint,
    }
    if teacher.conditioning is not None:
        meta["conditioning_sha256"] = teacher.conditioning.fingerprint
    path = os.path.join(out, SAMPLES_FILE)
    name = samples_name(sampler, steps, n, seed)
    if os.path.exists(path):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            old = dict(f.metadata() or {})
        if old != meta:
            differ = ", ".join(f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in meta.items() if old.get(k) != v)
            raise ValueError(
                f"out: {path} holds teacher samples made with other settings ({differ}); choose another "
                "--out or the same sampler settings, or delete that file to generate them again"
                + (
                    " (the teacher's weights changed since it was written)"
                    if old.get("teacher_sha256") != meta["teacher_sha256"]
                    else ""
                )
            )
        return ImageData(x=load_tensors(path)["x"], name=name)
    xs = []
    with torch.no_grad():
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            x = _generate(teacher, start, stop, sampler, steps, seed)
            if not torch.isfinite(x).all():  # a sampler without a finite check of its own
                raise ValueError(
                    f"teacher: {teacher.source}'s {sampler} samples contain NaN or Inf; it cannot teach "
                    "data-free. Check the teacher's weights"
                )
            xs.append(x.clamp(-1, 1))
            if progress:
                progress(stop - start)
    x = torch.cat(xs).float().contiguous()
    os.makedirs(out, exist_ok=True)
    save_tensors(path, {"x": x}, metadata=meta)
    return ImageData(x=x, name=name)


def distill_ladder(
    teacher: Teacher,
    out: str,
    data: ImageData,
    *,
    widths: Sequence[int] = (4, 8, 16),
    iters: int = 1200,
    seed: int = 0,
    batch: int = 32,
    lr: float = 2e-3,
    ema_decay: float = 0.995,
    save_every: int = 100,
    uncond_prob: float = 0.0,
    paired_rows: bool = False,
    progress: Optional[Callable[[int], None]] = None,
    command: Optional[str] = None,
    loss_plot: bool = True,
) -> UNetLadder:
    """Distill (or resume distilling) students of ``widths`` from ``teacher`` on x_0 from ``data``; write
    the ladder (students, then the teacher as the top level) to ``out`` and return it.

    Args:
        teacher: from :func:`load_teacher`.
        data: the x_0 images ``(n, C, size, size)`` in [-1, 1] (a data set, or :func:`teacher_samples`);
            their shape must be the teacher's.
        widths: student base widths, cheapest first, each smaller than the teacher's.
        uncond_prob: conditional teachers: see :class:`Distillation`.
        paired_rows: conditional teachers with ``data`` from :func:`teacher_samples`: example i uses the
            conditioning row its x_0 was generated with (i mod N) instead of a random row.
        iters, seed, batch, lr, ema_decay, save_every, progress, command, loss_plot: as
            :func:`~multilevel_em.images.train.train_ladder`.

    All checks (widths, data shape, ``out``) run before any training; calibration is the caller's
    (``MultilevelPipeline(ladder).calibrate()``, as ``mlem distill`` does; conditional ladders are
    not calibrated here).
    """
    check_students(teacher, widths)
    if (data.channels, data.size) != (teacher.channels, teacher.sample_size):
        raise ValueError(
            f"data: {data.name} has {data.channels}x{data.size}x{data.size} images, the teacher expects "
            f"{teacher.channels}x{teacher.sample_size}x{teacher.sample_size}"
        )
    rows = None
    if paired_rows:
        if teacher.conditioning is None:
            raise ValueError("paired_rows: the teacher is unconditional")
        rows = torch.tensor(teacher_rows(int(data.x.shape[0]), teacher.conditioning), dtype=torch.int64)
    objective = Distillation(teacher, data.name, uncond_prob, rows)
    check_out(out, data.name, teacher, uncond_prob, paired_rows)
    cfg = teacher.unet.config
    lpb = cfg.layers_per_block
    students = train_ladder(
        data,
        out,
        widths=[int(w) for w in widths],
        iters=iters,
        seed=seed,
        batch=batch,
        lr=lr,
        ema_decay=ema_decay,
        save_every=save_every,
        schedule=teacher.schedule,
        layers_per_block=int(lpb if isinstance(lpb, int) else max(lpb)),
        norm_groups=int(cfg.norm_num_groups or 32),
        progress=progress,
        command=command,
        loss_plot=loss_plot,
        objective=objective,
    )
    # The teacher joins as the top level (its weights unchanged); the index then lists all K + 1.
    top = os.path.join(out, f"level_{len(students) + 1}")
    save_level(top, teacher.unet, teacher.width, teacher.cost, teacher.schedule)
    ladder = UNetLadder(
        students.unets + [teacher.unet],
        students.widths + [teacher.width],
        students.costs + [teacher.cost],
        teacher.schedule,
        students.info,
    )
    ladder.info["teacher"] = {
        "source": os.fspath(teacher.source),
        "sha256": teacher.fingerprint,
        "level": f"level_{len(ladder)}",
    }
    if teacher.conditioning is not None:
        ladder.info["teacher"]["conditioning"] = {
            "source": teacher.conditioning.source,
            "sha256": teacher.conditioning.fingerprint,
        }
    from .._io import write_json

    write_json(os.path.join(out, INDEX), ladder.index())
    return load_ladder(out)

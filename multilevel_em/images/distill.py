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
Only unconditional ``UNet2DModel`` teachers are supported here.
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable, Dict, Optional, Sequence

import torch

from ..diffusion import VPSchedule
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

__all__ = ["Teacher", "Distillation", "load_teacher", "student_config", "teacher_samples", "distill_ladder",
           "SAMPLES_FILE"]

SAMPLES_FILE = "teacher_samples.safetensors"
#: Samplers the data-free mode may draw the teacher's samples with (one-model methods of MultilevelPipeline).
SAMPLERS = ("em", "ddim", "dpmpp_2m")


class Teacher:
    """The model students imitate.

    Attributes:
        unet: a diffusers ``UNet2DModel`` in eval mode.
        schedule: its VP schedule.
        width: ``block_out_channels[0]``.
        cost: FLOPs per sample of one forward pass.
        fingerprint: sha256 of its weights file (a resumed distillation must have the same teacher).
        source: the folder it was read from.
    """

    def __init__(self, unet, schedule: VPSchedule, fingerprint: str, source: str):
        self.unet, self.schedule, self.fingerprint, self.source = unet.eval(), schedule, fingerprint, source
        self.width = int(unet.config.block_out_channels[0])
        self.sample_size, self.channels = int(unet.config.sample_size), int(unet.config.in_channels)
        self.cost = unet_flops(unet, self.sample_size, self.channels)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_teacher(path: str) -> Teacher:
    """A ladder folder (its top level teaches) or one diffusers ``UNet2DModel`` folder.

    A model folder written by multilevel_em carries its schedule (``"_mlem"`` in ``config.json``);
    a plain diffusers folder gets diffusers' default linear DDPM schedule (``VPSchedule.linear()``).
    Raises ValueError naming ``teacher`` for anything else.
    """
    path = os.fspath(path)
    index_path, cfg_path = os.path.join(path, INDEX), os.path.join(path, UNET_CONFIG)
    if not os.path.isdir(path):
        raise ValueError(f"teacher: {path} is not a folder")
    if os.path.isfile(index_path):
        index = read_json(index_path)
        if index.get("format") != FORMAT:
            raise ValueError(f"teacher: {index_path} is not a multilevel_em ladder (no \"format\": \"{FORMAT}\"); "
                             "give a ladder folder or one diffusers UNet2DModel folder")
        ladder = load_ladder(path)
        top = os.path.join(path, index["levels"][-1])
        return Teacher(ladder.unets[-1], ladder.schedule, _sha256(os.path.join(top, WEIGHTS)), path)
    if not os.path.isfile(cfg_path):
        raise ValueError(f"teacher: {path} is neither a ladder folder ({INDEX}) nor a diffusers model folder "
                         f"({UNET_CONFIG} + {WEIGHTS})")
    config = read_json(cfg_path)
    if config.get("_class_name") != "UNet2DModel":
        raise ValueError(f"teacher: {cfg_path} describes a {config.get('_class_name')!r}; only unconditional "
                         "UNet2DModel teachers are supported")
    if "_mlem" in config:
        unet, _, _, schedule = load_unet(path)
    else:
        from diffusers import UNet2DModel

        try:
            unet = UNet2DModel.from_pretrained(path)
        except Exception as e:  # diffusers raises OSError / ValueError / EnvironmentError on bad folders
            raise ValueError(f"teacher: {path} does not load as a UNet2DModel: {e}") from None
        schedule = VPSchedule.linear()
    weights = os.path.join(path, WEIGHTS)
    return Teacher(unet, schedule, _sha256(weights) if os.path.isfile(weights) else "", path)


def student_config(teacher_config, width: int) -> Dict:
    """The teacher's config with ``block_out_channels`` scaled by ``width / teacher_width``.

    Raises ValueError naming ``widths`` when the width is not smaller than the teacher's, does not
    scale every block to whole channels, or is not divisible by the group norm's group count.
    """
    config = {k: v for k, v in dict(teacher_config).items() if not k.startswith("_")}
    channels = [int(c) for c in config["block_out_channels"]]
    tw, groups = channels[0], int(config.get("norm_num_groups", 32))
    if isinstance(width, bool) or not isinstance(width, int) or not 0 < width < tw:
        raise ValueError(f"widths: expected ints smaller than the teacher's width {tw} "
                         f"(block_out_channels {tuple(channels)}), got {width!r}")
    if any(c * width % tw for c in channels):
        raise ValueError(f"widths: width {width} scales the teacher's block_out_channels {tuple(channels)} to "
                         "fractional channels; choose a width that divides them evenly")
    scaled = [c * width // tw for c in channels]
    if any(c % groups for c in scaled):
        raise ValueError(f"widths: width {width} gives block_out_channels {tuple(scaled)}, not divisible by the "
                         f"group norm's norm_num_groups = {groups}; choose a multiple of {groups}")
    config["block_out_channels"] = scaled
    return config


class Distillation(Objective):
    """Students of the teacher's architecture regressing the teacher's output (module docstring)."""

    def __init__(self, teacher: Teacher, x0_source: str):
        self.teacher, self.x0_source = teacher, x0_source

    def build(self, width: int, **shapes):
        from diffusers import UNet2DModel

        return UNet2DModel.from_config(student_config(self.teacher.unet.config, width))

    def target(self, xt, k, eps):
        with torch.no_grad():  # the teacher is fixed; no graph through it
            return self.teacher.unet(xt, k).sample

    files = (SAMPLES_FILE,)

    def settings(self) -> Dict:
        return {"objective": "distill", "teacher_sha256": self.teacher.fingerprint, "x0": self.x0_source}


def check_students(teacher: Teacher, widths: Sequence[int]) -> None:
    """Build every student once (ValueError naming ``widths`` if the architecture cannot)."""
    ws = list(widths)
    if not ws or any(b < a for a, b in zip(ws, ws[1:])):
        raise ValueError(f"widths: expected nondecreasing widths, cheapest first, got {ws}")
    from diffusers import UNet2DModel

    for w in ws:
        config = student_config(teacher.unet.config, w)
        try:
            UNet2DModel.from_config(config)
        except Exception as e:  # diffusers / torch raise ValueError, RuntimeError, ... for impossible shapes
            raise ValueError(f"widths: width {w} (block_out_channels {tuple(config['block_out_channels'])}) does not "
                             f"build: {type(e).__name__}: {e}") from None


def check_out(out: str, x0_source: str, teacher: Teacher) -> None:
    """``out`` must be absent, empty, or a distillation of this teacher from the same x_0 (ValueError naming ``out``)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"out: {out} exists and is not a folder")
    if not os.path.isdir(out) or not set(os.listdir(out)) - {SAMPLES_FILE}:
        return
    index_path = os.path.join(out, INDEX)
    if not os.path.isfile(index_path):
        raise ValueError(f"out: {out} is not empty and holds no {INDEX}; refusing to write into it")
    training = read_json(index_path).get("training", {})
    want = Distillation(teacher, x0_source).settings()
    diff = {k: (training.get(k), v) for k, v in want.items() if training.get(k) != v}
    if diff:
        details = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
        raise ValueError(f"out: {out} holds something else ({details}); resume with the same teacher and data "
                         "or choose another --out")


def samples_name(sampler: str, steps: int, n: int, seed: int) -> str:
    """How data-free x_0 are named in the ladder's settings (a resumed run must match it)."""
    return f"teacher samples ({sampler}, {steps} steps, n={n}, seed {seed})"


def teacher_samples(teacher: Teacher, out: str, n: int, *, sampler: str = "dpmpp_2m", steps: int = 20, seed: int = 0,
                    batch: int = 256, progress: Optional[Callable[[int], None]] = None) -> ImageData:
    """``n`` samples of the teacher (clipped to [-1, 1]), generated once and cached in ``out/SAMPLES_FILE``.

    Sample i's randomness is keyed by (seed, i), so the cache does not depend on ``batch``. A cache
    made with other settings is refused (ValueError naming ``out``).
    """
    from ..engine import sample_generators
    from .pipeline import MultilevelPipeline

    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {', '.join(SAMPLERS)}, got {sampler!r}")
    for name, v in (("samples", n), ("sampler_steps", steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
    meta = {"sampler": sampler, "steps": str(steps), "n": str(n), "seed": str(seed),
            "teacher_sha256": teacher.fingerprint}
    path = os.path.join(out, SAMPLES_FILE)
    name = samples_name(sampler, steps, n, seed)
    if os.path.exists(path):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            old = dict(f.metadata() or {})
        if old != meta:
            raise ValueError(f"out: {path} holds teacher samples made with other settings ({old}); "
                             "choose another --out or the same sampler settings")
        return ImageData(x=load_tensors(path)["x"], name=name)
    pipe = MultilevelPipeline(UNetLadder([teacher.unet], [teacher.width], [teacher.cost], teacher.schedule))
    xs = []
    with torch.no_grad():
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            res = pipe(stop - start, method=sampler, steps=steps, generator=sample_generators(seed, range(start, stop)))
            if not torch.isfinite(res.x).all():
                raise ValueError(f"teacher: its {sampler} samples contain NaN or inf; it cannot teach data-free")
            xs.append(res.x.clamp(-1, 1))
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
        iters, seed, batch, lr, ema_decay, save_every, progress, command, loss_plot: as
            :func:`~multilevel_em.images.train.train_ladder`.

    All checks (widths, data shape, ``out``) run before any training; calibration is the caller's
    (``MultilevelPipeline(ladder).calibrate()``, as ``mlem distill`` does).
    """
    check_students(teacher, widths)
    if (data.channels, data.size) != (teacher.channels, teacher.sample_size):
        raise ValueError(f"data: {data.name} has {data.channels}x{data.size}x{data.size} images, the teacher expects "
                         f"{teacher.channels}x{teacher.sample_size}x{teacher.sample_size}")
    check_out(out, data.name, teacher)
    cfg = teacher.unet.config
    objective = Distillation(teacher, data.name)
    students = train_ladder(data, out, widths=[int(w) for w in widths], iters=iters, seed=seed, batch=batch, lr=lr,
                            ema_decay=ema_decay, save_every=save_every, schedule=teacher.schedule,
                            layers_per_block=int(cfg.layers_per_block), norm_groups=int(cfg.norm_num_groups),
                            progress=progress, command=command, loss_plot=loss_plot, objective=objective)
    # The teacher joins as the top level (its weights unchanged); the index then lists all K + 1.
    top = os.path.join(out, f"level_{len(students) + 1}")
    save_level(top, teacher.unet, teacher.width, teacher.cost, teacher.schedule)
    ladder = UNetLadder(students.unets + [teacher.unet], students.widths + [teacher.width],
                        students.costs + [teacher.cost], teacher.schedule, students.info)
    ladder.info["teacher"] = {"source": os.fspath(teacher.source), "sha256": teacher.fingerprint,
                              "level": f"level_{len(ladder)}"}
    from .._io import write_json

    write_json(os.path.join(out, INDEX), ladder.index())
    return load_ladder(out)

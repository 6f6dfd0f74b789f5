"""Image commands: ``mlem train``, ``mlem distill``, ``mlem sample`` and ``mlem train-classifier`` (UNet ladders)."""

from __future__ import annotations

import os
import time
import warnings

import click

from .._text import plural
from ..diffusion.registry import METHODS, SAMPLERS, teacher_samplers
from ._common import command_line, given_options, parse_floats, parse_ints
from ._errors import resume_on_interrupt, user_error
from ._paths import IMAGE_EXTENSIONS, POSITIVE, SEED, THREADS, check_device, check_output_file, check_output_folder

#: Default of ``mlem sample --max-steps``: the ceiling of ``Calibration.plan``'s step search (2**16).
MAX_STEPS = 2**16

#: The largest grid ``mlem sample --out grid.png`` writes, in pixels: PIL's own limit for opening an image
#: without a decompression-bomb warning (larger grids would be refused by image viewers and PIL alike, and
#: upscaling them needs gigabytes of memory).
MAX_GRID_PIXELS = 89_478_485


@click.command("train")
@click.option(
    "--dataset",
    required=True,
    help="'digits' (scikit-learn, 8x8 upsampled), 'fashion-mnist' (IDX files; see --data-dir) or a folder "
    "of PNG/JPEG images.",
)
@click.option(
    "--data-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Folder of the Fashion-MNIST IDX files (default: where 'apt-get install dataset-fashion-mnist' puts them).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Ladder folder; an existing one trained with the same settings is resumed.",
)
@click.option(
    "--widths",
    default="4,8,16,32",
    show_default=True,
    help="Comma-separated base widths w, cheapest first (block_out_channels = (w, 2w, 2w)).",
)
@click.option("--iters", default=1200, show_default=True, type=click.IntRange(min=1), help="Iterations per level.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--batch", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=2e-3, show_default=True, type=POSITIVE)
@click.option(
    "--ema",
    "ema_decay",
    default=0.995,
    show_default=True,
    type=click.FloatRange(min=0, max=1, max_open=True),
    help="EMA decay of the sampling weights (0: none).",
)
@click.option(
    "--size",
    default=None,
    type=click.IntRange(min=4),
    help="Image side in pixels (default: 32 for fashion-mnist, else 16).",
)
@click.option(
    "--channels", default=None, type=click.Choice(["1", "3"]), help="Folder data: 1 (grayscale) or 3 (RGB, default)."
)
@click.option(
    "--save-every", default=100, show_default=True, type=click.IntRange(min=1), help="Iterations between checkpoints."
)
@click.option(
    "--threads",
    default=1,
    show_default=True,
    type=THREADS,
    help="torch threads (1 is fastest for these small UNets on a shared CPU).",
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Where the UNets train (cpu, cuda); batches, timesteps and noise are drawn on the CPU, so a run may resume "
    "on another device.",
)
@click.option(
    "--calibrate/--no-calibrate",
    "do_calibrate",
    default=True,
    show_default=True,
    help="Calibrate the trained ladder and save calibration.json next to it.",
)
def train_cmd(
    dataset,
    data_dir,
    out,
    widths,
    iters,
    seed,
    batch,
    lr,
    ema_decay,
    size,
    channels,
    save_every,
    threads,
    device,
    do_calibrate,
):
    """Train a ladder of UNet noise predictors (one per width) on an image data set; resumable."""
    import torch

    from .._progress import progress_bar
    from ..images import CheckpointError, load_dataset, train_ladder

    ws = parse_ints("--widths", widths)
    check_output_folder(out, "--out")
    check_device(device)
    if size is None:
        size = 32 if dataset == "fashion-mnist" else 16
    if data_dir is not None and dataset != "fashion-mnist":
        raise click.BadParameter("only used with --dataset fashion-mnist", param_hint="--data-dir")
    if size % 4:  # three resolutions: the UNet halves the image twice
        raise click.BadParameter(
            f"expected a multiple of 4 (the UNet halves the image twice), got {size}", param_hint="--size"
        )
    torch.set_num_threads(threads)
    try:
        data = load_dataset(dataset, size=size, channels=None if channels is None else int(channels), data_dir=data_dir)
    except ValueError as e:
        raise user_error(e) from None
    click.echo(data.report())
    measured = _measured_samplers(out)
    start = time.perf_counter()
    try:
        with (
            resume_on_interrupt(lambda: f"the checkpoints in {out} are kept"),
            progress_bar(total=iters * len(ws), desc="train", unit="it") as bar,
        ):
            ladder = train_ladder(
                data,
                out,
                widths=ws,
                iters=iters,
                seed=seed,
                batch=batch,
                lr=lr,
                ema_decay=ema_decay,
                save_every=save_every,
                progress=bar.update,
                command=command_line(),
                device=device,
            )
    except (CheckpointError, ValueError) as e:
        raise user_error(e) from None
    _say_if_calibration_removed(out, measured)
    _finish_ladder(ladder, out, "trained", start, seed, do_calibrate)


def _finish_ladder(ladder, out, verb, start, seed, do_calibrate) -> None:
    """After `mlem train` / `mlem distill`: report the ladder's costs, calibrate it if asked, say where it is."""
    import torch

    click.echo(f"{verb} {ladder} in {time.perf_counter() - start:.0f} s; loss curve: {os.path.join(out, 'loss.png')}")
    for w, c in zip(ladder.widths, ladder.costs):
        click.echo(f"  width {w:>4}: {c / 1e6:8.2f} MFLOPs per sample")
    if do_calibrate and ladder.conditional:
        click.echo(
            "not calibrated: a conditional ladder is sampled through MultilevelModel, which calibrates on your "
            "own pipeline call (MultilevelModel.calibrate; see multilevel_em.images.conditioning)"
        )
    elif do_calibrate:
        from ..calibration import Calibration
        from ..images.pipeline import CALIBRATION, MultilevelPipeline

        path = os.path.join(out, CALIBRATION)
        try:  # training removes the calibration of weights it changed: one still there describes these weights
            cal = Calibration.load(path) if os.path.exists(path) else None
        except (ValueError, OSError) as e:
            click.echo(f"warning: {path} is unreadable ({e}); measuring it again", err=True)
            cal = None
        if cal is not None and list(cal.names) != list(ladder.names):
            click.echo(f"warning: {path} was made for levels {list(cal.names)}; measuring it again", err=True)
            cal = None
        if cal is not None:
            click.echo(
                f"kept {path}: the ladder did not change since it was measured "
                "(`mlem calibrate --ladder DIR --overwrite` measures it again)"
            )
        else:
            pipe = MultilevelPipeline(ladder)
            cal = pipe.calibrate(generator=torch.Generator().manual_seed(seed))
            pipe.save_calibration(out)
        click.echo(cal.summary())
    click.echo(f"wrote {out}")


def _measured_samplers(out) -> list:
    """The samplers that OUT/calibration.json measured (``mlem calibrate --samplers``), before training changes
    the weights it describes (and removes it); [] if none or unreadable."""
    import json

    try:
        with open(os.path.join(out, "calibration.json")) as f:
            return sorted(json.load(f).get("samplers") or {})
    except (OSError, ValueError, AttributeError):
        return []


def _say_if_calibration_removed(out, samplers) -> None:
    """Training changed the weights, so train_ladder removed the calibration that described the old ones: say
    so when it held sampler measurements (minutes each), which `mlem calibrate` must then take again."""
    if samplers and not os.path.exists(os.path.join(out, "calibration.json")):
        click.echo(
            f"removed {os.path.join(out, 'calibration.json')}: it measured the weights before this run, including "
            f"samplers {', '.join(samplers)}; measure them again with `mlem calibrate --ladder {out} --samplers "
            f"{','.join(samplers)}`",
            err=True,
        )


@click.command("sample")
@click.option(
    "--ladder",
    "ladder_path",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="A ladder folder (from `mlem train` or save_pretrained).",
)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="mlem",
    show_default=True,
    help="mlem: the ladder; em, ddpm, ddim, euler_ode, dpmpp_2m: the top UNet alone with that sampler; "
    "stitch: T-Stitch; auto: for --budget, what the calibration predicts most accurate: with schedule "
    "measurements (mlem calibrate --schedules) the best of the top UNet alone, switches, ML-EM and hybrids in "
    "each measured sampler; otherwise mlem (inside each measured sampler) or the top UNet alone (needs mlem "
    "calibrate --samplers).",
)
@click.option(
    "--sampler",
    default=None,
    type=click.Choice(SAMPLERS),
    help="mlem / stitch: the sampling loop (default em for mlem, ddim for stitch). A planned mlem run is "
    "planned inside it when the ladder's calibration measured it (mlem calibrate --samplers), and "
    "the plan says when the top UNet alone with some sampler is predicted to do better.",
)
@click.option("--n", "n", default=64, show_default=True, type=int, help="Number of images (>= 1).")
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    help="A folder of shards (a sampling job, resumable), or a file ending in .png for one image grid "
    "(its cost report goes beside it: grid.png -> grid.json).",
)
@click.option("--steps", default=None, type=click.IntRange(min=1), help="Steps (default: the method's or the plan's).")
@click.option(
    "--budget",
    default=None,
    type=POSITIVE,
    help="Cost per sample in top-level equivalents (mlem: plans levels, steps and rates; default for mlem "
    "without --rates: 100).",
)
@click.option(
    "--rates",
    default=None,
    help="mlem: comma-separated rates lambda_2..lambda_K per unit of diffusion time (with --steps), "
    "instead of a planned budget.",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=SEED,
    help="Sample i's random numbers are keyed by (seed, i), whatever the batch or worker.",
)
@click.option(
    "--batch-size",
    default=256,
    show_default=True,
    type=click.IntRange(min=1),
    help="Samples per batch (per shard for a job folder).",
)
@click.option(
    "--ray",
    "ray_address",
    default=None,
    help="Run the job on Ray: 'local' (start a local instance), 'auto' or HOST:PORT (join a cluster). "
    "Needs pip install 'multilevel-em[distributed]'.",
)
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Ray workers (default: all CPUs).")
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Where the UNets run (cpu, cuda); random numbers are drawn on the CPU.",
)
@click.option(
    "--batch-invariant",
    is_flag=True,
    help="Evaluate the UNets one image at a time: image i is then bit-identical at any --batch-size "
    "(3-10x slower on a CPU).",
)
@click.option(
    "--trace",
    is_flag=True,
    help="Run the UNets as TorchScript traces (less per-call overhead; results equal the eager forward's "
    "up to float rounding).",
)
@click.option(
    "--compile",
    "compile_levels",
    is_flag=True,
    help="Grid only: run the UNets through torch.compile (CUDA graphs on CUDA), mlem with static draws (each "
    "level runs on sub-batches padded to a few bucket sizes, one compiled graph each); the first batch pays "
    "the compilation (tens of seconds per UNet and size on a CPU). Not with --trace.",
)
@click.option("--png", "write_png", is_flag=True, help="Job folder: also write one PNG per sample under OUT/png.")
@click.option(
    "--scale",
    default=4,
    show_default=True,
    type=click.IntRange(min=1),
    help=f"Upscale the grid by this factor (a grid has at most {MAX_GRID_PIXELS:,} pixels).",
)
@click.option(
    "--threads", default=1, show_default=True, type=THREADS, help="torch threads (grid only; job workers use 1 each)."
)
@click.option("--overwrite", is_flag=True, help="Grid only: replace existing output files.")
@click.option(
    "--max-steps",
    default=MAX_STEPS,
    show_default=True,
    type=click.IntRange(min=1),
    help="Refuse a step count above this (given by --steps, or by --budget for the one-model methods): "
    "a guard against a mistyped budget; the ML-EM planner searches up to the same default.",
)
def sample_cmd(
    ladder_path,
    method,
    sampler,
    n,
    out,
    steps,
    budget,
    rates,
    seed,
    batch_size,
    ray_address,
    workers,
    device,
    batch_invariant,
    trace,
    compile_levels,
    write_png,
    scale,
    threads,
    overwrite,
    max_steps,
):
    """Sample N images from a UNet ladder: into a folder of shards (a job, resumable, optionally on Ray), or
    into one image grid when OUT ends in .png."""
    if n < 1:
        raise click.BadParameter(f"expected the number of images, an int >= 1, got {n}", param_hint="--n")
    if sampler is not None and method not in ("mlem", "stitch"):
        raise click.BadParameter(
            f"only for --method mlem or stitch (--method {method} is its own sampler)", param_hint="--sampler"
        )
    _check_step_count(method, steps, budget, max_steps)
    if compile_levels and trace:
        raise click.BadParameter("choose one of --trace and --compile", param_hint="--compile")
    if rates is not None:
        rates = parse_floats("--rates", rates)
        if any(r < 0 for r in rates):
            raise click.BadParameter(f"expected rates >= 0, got {rates}", param_hint="--rates")
    ext = os.path.splitext(out)[1].lower()
    if ext in IMAGE_EXTENSIONS and ext != ".png":
        raise click.BadParameter(
            f"{out}: a grid is written as PNG only; name it *.png (or give a folder for a job)", param_hint="--out"
        )
    if ext == ".png":
        for flag, value in (("--ray", ray_address), ("--workers", workers), ("--png", write_png or None)):
            if value is not None:
                raise click.BadParameter("only for a job folder; OUT ends in .png (one image grid)", param_hint=flag)
        _sample_grid(
            ladder_path,
            method,
            n,
            out,
            steps,
            budget,
            rates,
            seed,
            batch_size,
            device,
            batch_invariant,
            scale,
            threads,
            overwrite,
            sampler,
            trace,
            compile_levels,
        )
    else:
        if compile_levels:
            raise click.BadParameter(
                "only for an image grid (OUT ending in .png) for now; a job folder runs eager or --trace",
                param_hint="--compile",
            )
        if overwrite:
            raise click.BadParameter(
                "a job folder is resumed, never overwritten; delete it or choose another folder to start over",
                param_hint="--overwrite",
            )
        if workers is not None and ray_address is None:
            raise click.BadParameter("needs --ray (without Ray the job runs in this process)", param_hint="--workers")
        grid_only = given_options(("scale", "threads"))
        if grid_only:  # a job writes arrays (and --png files at scale 1); its workers take one thread each
            raise click.BadParameter(
                "only for an image grid (OUT ending in .png); a job folder has no grid, and its workers use one "
                "thread each",
                param_hint=", ".join(grid_only),
            )
        check_output_folder(out, "--out")
        _sample_job(
            ladder_path,
            method,
            n,
            out,
            steps,
            budget,
            rates,
            seed,
            batch_size,
            ray_address,
            workers,
            device,
            batch_invariant,
            write_png,
            sampler,
            trace,
        )


def _check_step_count(method, steps, budget, max_steps) -> None:
    """Refuse, before any work, a step count above ``--max-steps``: ``--budget 1e7`` with a one-model method
    means 10 million steps (hours to days), more likely a typo than a wish."""
    if steps is not None and steps > max_steps:
        raise click.BadParameter(
            f"{steps} steps is above --max-steps {max_steps}; lower it, or raise --max-steps to run that many",
            param_hint="--steps",
        )
    if steps is None and budget is not None and method not in ("mlem", "stitch", "auto"):
        from ..calibration import budget_steps

        implied = budget_steps(budget)  # what the pipeline takes from the budget: one step each
        if implied > max_steps:
            raise click.BadParameter(
                f"{budget:g} top-level equivalents means {implied} steps of --method {method}, "
                f"above --max-steps {max_steps}; lower it, or raise --max-steps to run that many",
                param_hint="--budget",
            )


def _sample_job(
    ladder_path,
    method,
    n,
    out,
    steps,
    budget,
    rates,
    seed,
    batch_size,
    ray_address,
    workers,
    device,
    batch_invariant,
    write_png,
    sampler=None,
    trace=False,
):
    from ..images import CheckpointError
    from ..jobs import JobError, SamplingJob, completed_shards, run_job

    if ray_address is None:  # on Ray the workers' devices count, not this machine's
        check_device(device)
    try:
        job = SamplingJob(
            ladder=ladder_path,
            n=n,
            out=out,
            method=method,
            batch_size=batch_size,
            seed=seed,
            steps=steps,
            budget=budget,
            rates=rates,
            png=write_png,
            device=device,
            batch_invariant=batch_invariant,
            sampler=sampler,
            trace=trace,
        )
        kept = lambda: f"{len(completed_shards(job))} of {plural(job.n_shards, 'shard')} complete in {out}"  # noqa: E731
        with resume_on_interrupt(kept):
            report = run_job(job, ray=ray_address, workers=workers, echo=click.echo)
    except (JobError, CheckpointError, ValueError, FloatingPointError) as e:
        raise user_error(e) from None
    tput = report["throughput_samples_per_second"]
    click.echo(
        f"{method}: {plural(report['samples'], 'sample')} in {plural(report['shards'], 'shard')}, "
        f"{plural(report['steps'], 'step')}, "
        f"{report['top_equivalents_per_sample']:.4g} top-level equivalents per sample; "
        f"{report['computed_this_run']} computed in this run on {report['executor']}"
        + (f", {tput:.3g} samples/s" if tput else "")
    )
    for lv in report["levels"]:
        click.echo(f"  level {lv['level']}: {lv['evaluations_per_sample']:.4g} evaluations per sample")
    if "plan" in report:  # as for a grid: say what the plan predicts, including when ML-EM does not help
        click.echo(f"plan: {report['plan']['message']}")
    click.echo(f"wrote {out}")


def _sample_grid(
    ladder_path,
    method,
    n,
    out,
    steps,
    budget,
    rates,
    seed,
    batch_size,
    device,
    batch_invariant,
    scale,
    threads,
    overwrite,
    sampler=None,
    trace=False,
    compile_levels=False,
):
    import numpy as np
    import torch

    from .._io import atomic_write, write_json
    from .._progress import progress_bar
    from ..engine import sample_generators
    from ..images import CheckpointError, MultilevelPipeline, image_grid
    from ..images.pipeline import grid_size

    report_path = os.path.splitext(out)[0] + ".json"
    if not overwrite:
        existing = [p for p in (out, report_path) if os.path.exists(p)]
        if existing:
            raise click.ClickException(
                f"{' and '.join(existing)} {'exists' if len(existing) == 1 else 'exist'}; pass --overwrite to replace"
            )
    check_output_file(out, "--out")
    check_output_file(report_path, "--out")
    check_device(device)
    torch.set_num_threads(threads)
    try:
        pipe = MultilevelPipeline.from_pretrained(ladder_path).to(device)
    except (CheckpointError, ValueError) as e:
        raise user_error(e) from None
    except (RuntimeError, AssertionError) as e:  # torch: unknown device, or no CUDA in this build
        raise click.BadParameter(f"cannot use {device!r}: {e}", param_hint="--device") from None
    size = pipe.ladder.sample_size
    width, height = grid_size(n, size, size, scale=scale)
    if width * height > MAX_GRID_PIXELS:  # checked before sampling: the grid is made after all of it
        raise click.BadParameter(
            f"a grid of {plural(n, 'image')} at --scale {scale} would be {width} x {height} pixels, above the "
            f"{MAX_GRID_PIXELS:,} a PNG grid may have; lower --scale or --n, or give a folder as --out "
            "(a sampling job, one file per shard)",
            param_hint="--scale",
        )
    images, reports = [], []
    one_batch = n <= batch_size  # then a bar over the steps (its total set by the pipeline), else over the images
    with progress_bar(
        total=None if one_batch else n, desc=f"sample {method}", unit="step" if one_batch else "img"
    ) as bar:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            try:
                result = pipe(
                    stop - start,
                    method=method,
                    sampler=sampler,
                    steps=steps,
                    budget=budget,
                    rates=rates,
                    batch_invariant=batch_invariant,
                    trace=trace,
                    **(
                        {"compile": True, "draws": "static" if method in ("mlem", "auto") else "per_sample"}
                        if compile_levels
                        else {}
                    ),
                    generator=sample_generators(seed, range(start, stop)),
                    progress=bar if one_batch else None,
                )
            except (ValueError, FloatingPointError) as e:
                raise user_error(f"{e}; nothing was written") from None
            images.append(result.images)
            reports.append(result.report)
            if not one_batch:
                bar.update(stop - start)
    r = dict(reports[0])
    r["n"] = n
    r["levels"] = [
        dict(
            lv,
            evaluations_per_sample=sum(rep["levels"][j]["evaluations_per_sample"] * rep["n"] for rep in reports) / n,
            top_equivalents=sum(rep["levels"][j]["top_equivalents"] * rep["n"] for rep in reports) / n,
        )
        for j, lv in enumerate(r["levels"])
    ]
    for key in ("top_equivalents_per_sample", "flops_per_sample"):
        r[key] = sum(rep[key] * rep["n"] for rep in reports) / n
    r["wall_seconds"] = wall = sum(rep["wall_seconds"] for rep in reports)
    r["wall_seconds_per_sample"] = wall / n
    grid = image_grid(np.concatenate(images), scale=scale)
    report = dict(
        r, ladder=os.fspath(ladder_path), seed=seed, batch_size=batch_size, command=command_line(), grid=os.fspath(out)
    )
    try:
        atomic_write(out, lambda tmp: grid.save(tmp, format="PNG"))
        write_json(report_path, report)
    except OSError as e:  # a full disk, say: the atomic writes left no half-written file
        raise click.ClickException(f"writing {out} failed: {e.strerror or e}") from None
    click.echo(
        f"{method}: {plural(r['steps'], 'step')}, {r['top_equivalents_per_sample']:.4g} top-level equivalents per sample, "
        f"{r['wall_seconds']:.2f} s wall-clock"
    )
    for lv in r["levels"]:
        click.echo(f"  level {lv['level']} ({lv['name']}): {lv['evaluations_per_sample']:.4g} evaluations per sample")
    if "auto" in r:
        a = r["auto"]
        if a["method"] == "schedule":
            ran = f"{a['schedule']} in {a['sampler']}"
        elif a["method"] == "mlem":
            ran = f"mlem inside {a['sampler']}"
        else:
            ran = f"{a['method']}, {a['steps']} steps"
        click.echo(
            f"auto: ran {ran} (predicted error {a['predicted_error']:.4g}, the smallest of "
            f"{len(a['candidates'])} measured options at this budget)"
        )
    if "plan" in r:  # say what the plan predicts, including when it says ML-EM does not help
        click.echo(f"plan: {r['plan']['message']}")
    click.echo(f"wrote {out} and {report_path}")


@click.command("train-classifier")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to write the safetensors weights (the shipped classifiers live in "
    "multilevel_em/images/pretrained/; an existing file is replaced only with --overwrite).",
)
@click.option(
    "--dataset",
    default="digits",
    show_default=True,
    type=click.Choice(["digits", "fashion-mnist"]),
    help="digits: DigitClassifier (16x16); fashion-mnist: FashionClassifier (32x32, accuracy on the 10k test images).",
)
@click.option(
    "--data-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Folder of the Fashion-MNIST IDX files (default: where 'apt-get install dataset-fashion-mnist' puts them).",
)
@click.option(
    "--epochs", default=None, type=click.IntRange(min=1), help="Epochs (default: 30 digits, 8 fashion-mnist)."
)
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def train_classifier_cmd(out, dataset, data_dir, epochs, seed, overwrite):
    """Train the small classifier whose features the image metrics (KID, Frechet distance) use.

    digits: about 30 s on one core; fashion-mnist: about 50 minutes of one busy core for 8 epochs."""
    import torch

    from .._progress import progress_bar
    from ..images.metrics import train_digit_classifier, train_fashion_classifier

    check_output_file(out, "--out", suffixes=(".safetensors",), overwrite=overwrite)
    if data_dir is not None and dataset != "fashion-mnist":
        raise click.BadParameter("only used with --dataset fashion-mnist", param_hint="--data-dir")
    torch.set_num_threads(1)
    if dataset == "digits":
        _, info = train_digit_classifier(out, epochs=epochs or 30, seed=seed)
        click.echo(f"train accuracy {info['train_accuracy']:.4f}, held-out accuracy {info['holdout_accuracy']:.4f}")
    else:
        epochs = epochs or 8
        try:
            # Fashion-MNIST has 60,000 training images: ceil(60000 / 128) batches of 128 an epoch.
            with progress_bar(total=epochs * 469, desc="train-classifier", unit="batch") as bar:
                _, info = train_fashion_classifier(
                    out, epochs=epochs, seed=seed, data_dir=data_dir, progress=bar.update
                )
        except ValueError as e:
            raise user_error(e) from None
        click.echo(
            f"train accuracy {info['train_accuracy']:.4f}, test accuracy {info['test_accuracy']:.4f} "
            "(the 10,000 Fashion-MNIST test images)"
        )
    click.echo(f"wrote {out}")


@click.command("distill")
@click.option(
    "--teacher",
    required=True,
    type=click.Path(),
    help="A ladder folder (its top level teaches) or one diffusers UNet2DModel / UNet2DConditionModel folder.",
)
@click.option(
    "--conditioning",
    default=None,
    type=click.Path(),
    help="Conditional teachers: a safetensors file of 'encoder_hidden_states' (N, seq, dim) and/or "
    "'class_labels' (N,), optionally 'uncond_encoder_hidden_states' (seq, dim) / "
    "'uncond_class_labels' (); each example gets one row (data-free: sample i is made with row i mod N).",
)
@click.option(
    "--uncond-prob",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0, max=1),
    help="Conditional teachers trained for guidance: probability that an example uses the file's unconditional row.",
)
@click.option(
    "--widths",
    default="4,8,16",
    show_default=True,
    help="Comma-separated student widths, cheapest first, each smaller than the teacher's "
    "(block_out_channels scaled by width / teacher width).",
)
@click.option("--iters", default=1200, show_default=True, type=click.IntRange(min=1), help="Iterations per student.")
@click.option("--out", required=True, type=click.Path(), help="Ladder folder (students + the teacher); resumable.")
@click.option(
    "--data",
    default=None,
    help="x_0: 'digits', 'fashion-mnist' (the IDX files of Debian's dataset-fashion-mnist) or a folder of PNG/JPEG "
    "images; default: data-free (the teacher's own samples).",
)
@click.option(
    "--samples",
    default=2048,
    show_default=True,
    type=click.IntRange(min=1),
    help="Data-free: how many teacher samples to generate (once; cached in OUT).",
)
@click.option(
    "--sampler",
    default="dpmpp_2m",
    show_default=True,
    type=click.Choice(teacher_samplers()),
    help="Data-free: the sampler of the teacher's samples.",
)
@click.option("--sampler-steps", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--batch", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=2e-3, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option(
    "--ema", "ema_decay", default=0.995, show_default=True, type=click.FloatRange(min=0, max=1, max_open=True)
)
@click.option("--save-every", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", default=1, show_default=True, type=THREADS)
@click.option(
    "--calibrate/--no-calibrate",
    "do_calibrate",
    default=True,
    show_default=True,
    help="Calibrate the distilled ladder and save calibration.json next to it.",
)
def distill_cmd(
    teacher,
    conditioning,
    uncond_prob,
    widths,
    iters,
    out,
    data,
    samples,
    sampler,
    sampler_steps,
    seed,
    batch,
    lr,
    ema_decay,
    save_every,
    threads,
    do_calibrate,
):
    """Distill a ladder from one model: narrower students that imitate the teacher, the teacher on top."""
    import torch

    from .._progress import progress_bar
    from ..images import CheckpointError, load_dataset
    from ..images.conditioning import load_conditioning
    from ..images.distill import (
        Distillation,
        check_out,
        check_students,
        distill_ladder,
        load_teacher,
        samples_name,
        teacher_samples,
    )

    ws = parse_ints("--widths", widths)
    torch.set_num_threads(threads)
    try:
        cond = None if conditioning is None else load_conditioning(conditioning)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t = load_teacher(teacher, cond)
        for w in caught:
            click.echo(f"warning: {w.message}", err=True)
        Distillation(t, "", uncond_prob)
    except (CheckpointError, ValueError) as e:
        raise user_error(e, hint="--teacher") from None
    try:
        check_students(t, ws)
    except ValueError as e:
        raise user_error(e, hint="--widths") from None
    try:
        if data is not None:
            x0 = load_dataset(data, size=t.sample_size, channels=t.channels)
        else:
            x0 = None
    except ValueError as e:
        raise user_error(e, hint="--data") from None
    try:
        paired = t.conditional and x0 is None  # data-free conditional: each sample keeps its row
        check_out(
            out,
            x0.name if x0 is not None else samples_name(sampler, sampler_steps, samples, seed),
            t,
            uncond_prob,
            paired,
        )
    except ValueError as e:
        raise user_error(e, hint="--out") from None
    measured = _measured_samplers(out)
    start = time.perf_counter()
    try:
        # Teacher samples are written once, all generated: an interruption before that keeps none of them.
        with resume_on_interrupt(
            lambda: (
                f"what {out} holds so far is kept"
                if x0 is not None
                else "no teacher sample is kept (they are saved once all are generated); rerunning "
                "starts their generation again"
            )
        ):
            if x0 is None:
                with progress_bar(total=samples, desc=f"teacher samples ({sampler})", unit="img") as bar:
                    x0 = teacher_samples(
                        t, out, samples, sampler=sampler, steps=sampler_steps, seed=seed, progress=bar.update
                    )
            click.echo(x0.report())
            with progress_bar(total=iters * len(ws), desc="distill", unit="it") as bar:
                ladder = distill_ladder(
                    t,
                    out,
                    x0,
                    widths=ws,
                    iters=iters,
                    seed=seed,
                    batch=batch,
                    lr=lr,
                    ema_decay=ema_decay,
                    save_every=save_every,
                    uncond_prob=uncond_prob,
                    paired_rows=paired,
                    progress=bar.update,
                    command=command_line(),
                )
    except (CheckpointError, ValueError) as e:
        raise user_error(e) from None
    _say_if_calibration_removed(out, measured)
    _finish_ladder(ladder, out, "distilled", start, seed, do_calibrate)

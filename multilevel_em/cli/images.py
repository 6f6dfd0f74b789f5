"""``mlem train`` and ``mlem sample``: UNet ladders on images (registered in :mod:`.main`)."""

from __future__ import annotations

import os
import shlex
import sys
import time

import click


def _int_list(name: str, text: str) -> list:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=name) from None
    if not values or any(v < 1 for v in values):
        raise click.BadParameter(f"expected positive integers, got {text!r}", param_hint=name)
    return values


def _command_line() -> str:
    return " ".join(["mlem"] + [shlex.quote(a) for a in sys.argv[1:]])


@click.command("train")
@click.option("--dataset", required=True, help="'digits' (scikit-learn, 8x8 upsampled) or a folder of PNG/JPEG images.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Ladder folder; an existing one trained with the same settings is resumed.")
@click.option("--widths", default="4,8,16,32", show_default=True,
              help="Comma-separated base widths w, cheapest first (block_out_channels = (w, 2w, 2w)).")
@click.option("--iters", default=1200, show_default=True, type=click.IntRange(min=1), help="Iterations per level.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--batch", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=2e-3, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--ema", "ema_decay", default=0.995, show_default=True, type=click.FloatRange(min=0, max=1, max_open=True),
              help="EMA decay of the sampling weights (0: none).")
@click.option("--size", default=16, show_default=True, type=click.IntRange(min=4), help="Image side in pixels.")
@click.option("--channels", default=None, type=click.Choice(["1", "3"]), help="Folder data: 1 (grayscale) or 3 (RGB, default).")
@click.option("--save-every", default=100, show_default=True, type=click.IntRange(min=1), help="Iterations between checkpoints.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="torch threads (1 is fastest for these small UNets on a shared CPU).")
@click.option("--calibrate/--no-calibrate", "do_calibrate", default=True, show_default=True,
              help="Calibrate the trained ladder and save calibration.json next to it.")
def train_cmd(dataset, out, widths, iters, seed, batch, lr, ema_decay, size, channels, save_every, threads, do_calibrate):
    """Train a ladder of UNet noise predictors (one per width) on an image data set; resumable."""
    import torch
    from tqdm import tqdm

    from ..images import CheckpointError, load_dataset, train_ladder

    ws = _int_list("--widths", widths)
    torch.set_num_threads(threads)
    try:
        data = load_dataset(dataset, size=size, channels=None if channels is None else int(channels))
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(data.report())
    start = time.perf_counter()
    try:
        with tqdm(total=iters * len(ws), desc="train", unit="it") as bar:
            ladder = train_ladder(data, out, widths=ws, iters=iters, seed=seed, batch=batch, lr=lr, ema_decay=ema_decay,
                                  save_every=save_every, progress=bar.update, command=_command_line())
    except (CheckpointError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"trained {ladder} in {time.perf_counter() - start:.0f} s; loss curve: {os.path.join(out, 'loss.png')}")
    for w, c in zip(ladder.widths, ladder.costs):
        click.echo(f"  width {w:>4}: {c / 1e6:8.2f} MFLOPs per sample")
    if do_calibrate:
        from ..images.pipeline import MultilevelPipeline

        pipe = MultilevelPipeline(ladder)
        cal = pipe.calibrate(generator=torch.Generator().manual_seed(seed))
        pipe.save_calibration(out)
        click.echo(cal.summary())
    click.echo(f"wrote {out}")


@click.command("sample")
@click.option("--ladder", "ladder_path", required=True, type=click.Path(file_okay=False, exists=True),
              help="A ladder folder (from `mlem train` or save_pretrained).")
@click.option("--method", type=click.Choice(["mlem", "em", "ddim", "dpmpp_2m", "stitch"]), default="mlem", show_default=True)
@click.option("--n", "n", default=64, show_default=True, type=click.IntRange(min=1), help="Number of images.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The image grid (PNG); the cost report goes to OUT.json.")
@click.option("--steps", default=None, type=click.IntRange(min=1), help="Steps (default: the method's or the plan's).")
@click.option("--budget", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Cost per sample in top-level equivalents (mlem: plans levels, steps and rates).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--scale", default=4, show_default=True, type=click.IntRange(min=1), help="Upscale the grid by this factor.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def sample_cmd(ladder_path, method, n, out, steps, budget, seed, scale, threads, overwrite):
    """Sample N images from a UNet ladder; write an image grid and a JSON cost report next to it."""
    import torch
    from tqdm import tqdm

    from ..bench.common import write_json
    from ..images import CheckpointError, MultilevelPipeline, image_grid

    report_path = os.path.splitext(out)[0] + ".json"
    if not overwrite:
        existing = [p for p in (out, report_path) if os.path.exists(p)]
        if existing:
            raise click.ClickException(f"{', '.join(existing)} exists; pass --overwrite to replace it")
    torch.set_num_threads(threads)
    try:
        pipe = MultilevelPipeline.from_pretrained(ladder_path)
    except (CheckpointError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    with tqdm(desc=f"sample {method}", unit="step") as bar:
        try:
            result = pipe(n, method=method, steps=steps, budget=budget, generator=torch.Generator().manual_seed(seed),
                          progress=bar)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    image_grid(result.images, scale=scale).save(out)
    report = dict(result.report, ladder=os.fspath(ladder_path), seed=seed, command=_command_line(), grid=os.fspath(out))
    write_json(report_path, report)
    r = result.report
    click.echo(f"{method}: {r['steps']} steps, {r['top_equivalents_per_sample']:.4g} top-level equivalents per sample, "
               f"{r['wall_seconds']:.2f} s wall-clock")
    for lv in r["levels"]:
        click.echo(f"  level {lv['level']} ({lv['name']}): {lv['evaluations_per_sample']:.4g} evaluations per sample")
    click.echo(f"wrote {out} and {report_path}")


@click.command("train-classifier")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Where to write the safetensors weights (default: the shipped file in multilevel_em/images/pretrained).")
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
def train_classifier_cmd(out, epochs, seed):
    """Train the small digit classifier whose features the image KID uses (about 30 s on one core)."""
    import torch

    from ..images.metrics import DEFAULT_CLASSIFIER, train_digit_classifier

    torch.set_num_threads(1)
    out = out or DEFAULT_CLASSIFIER
    _, info = train_digit_classifier(out, epochs=epochs, seed=seed)
    click.echo(f"train accuracy {info['train_accuracy']:.4f}, held-out accuracy {info['holdout_accuracy']:.4f}")
    click.echo(f"wrote {out}")


@click.command("images")
@click.option("--ladder", "ladder_path", default=None, type=click.Path(file_okay=False, exists=True),
              help="A ladder folder (default: the shipped digits ladder).")
@click.option("--n", "n", default=256, show_default=True, type=click.IntRange(min=16), help="Samples per run.")
@click.option("--quick", is_flag=True, help="A reduced sweep (n=64, fewer settings; a few minutes).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", default="results/images.json", show_default=True, type=click.Path(dir_okay=False))
def bench_images_cmd(ladder_path, n, quick, seed, out):
    """Cost (top-level equivalents, CPU wall-clock) vs KID of EM-top, DDIM, DPM-Solver++ and ML-EM on a UNet ladder."""
    from ..bench.images import run_images_bench

    ladder_path = ladder_path or os.path.join(os.path.dirname(__file__), "..", "images", "pretrained", "digits")
    kw = {}
    if quick:
        n = min(n, 64)
        kw = dict(em_steps=(250, 50), ddim_steps=(25,), dpm_steps=(10,), mlem_budgets=(50,))
    run_images_bench(os.path.normpath(ladder_path), n=n, seed=seed, out=out, command=_command_line(), echo=click.echo, **kw)
    click.echo(f"wrote {out}")

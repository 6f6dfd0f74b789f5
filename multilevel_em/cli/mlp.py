"""``mlem train-mlp``: ladders of MLP noise predictors for the synthetic diffusion problems."""

from __future__ import annotations

import os

import click

from ._common import parse_floats
from ._paths import POSITIVE, SEED, check_output_folder


@click.command("train-mlp")
@click.option(
    "--problem",
    type=click.Choice(["gaussian", "mixture"]),
    required=True,
    help="Gaussian with a full covariance, or a Gaussian mixture (4 components).",
)
@click.option("--dim", default=8, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Folder for config.json and level_k.safetensors."
)
@click.option("--steps", default=2000, show_default=True, type=click.IntRange(min=1), help="Optimizer steps per level.")
@click.option(
    "--widths", default="32,64,128,256", show_default=True, help="Comma-separated hidden widths, cheapest first."
)
@click.option("--batch", default=512, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=2e-3, show_default=True, type=POSITIVE)
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seeds the problem, the weights and the data.")
@click.option("--overwrite", is_flag=True, help="Replace the MLP ladder already in --out (checked before training).")
def train_mlp(problem, dim, out, steps, widths, batch, lr, seed, overwrite) -> None:
    """Train a ladder of MLP noise predictors on exact samples of a problem, save it, report its gamma."""
    from .._progress import progress_bar
    from ..bench.common import single_thread
    from ..diffusion.mlp import measure_gamma, train_mlp_ladder
    from ..problems.gaussian import gaussian, gaussian_mixture

    ws = [int(w) for w in parse_floats("--widths", widths)]
    if any(w < 1 for w in ws):
        raise click.BadParameter(f"expected positive widths, got {widths!r}", param_hint="--widths")
    check_output_folder(out, "--out")
    if any(b < a for a, b in zip(ws, ws[1:])):
        raise click.BadParameter(
            f"expected nondecreasing widths, cheapest first, got {widths!r}", param_hint="--widths"
        )
    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, "config.json")):
        raise click.BadParameter(
            f"{out} exists, is not empty and holds no MLP ladder (config.json); refusing to write into it",
            param_hint="--out",
        )
    if os.path.exists(os.path.join(out, "config.json")) and not overwrite:
        raise click.BadParameter(f"{out} holds an MLP ladder; pass --overwrite to replace it", param_hint="--out")
    P = gaussian(dim, seed=seed) if problem == "gaussian" else gaussian_mixture(dim, seed=seed)
    # Small layers: one thread is as fast as several and does not fight other work for the cores.
    with single_thread(), progress_bar(total=steps * len(ws), desc=f"train {problem} d={dim}", unit="step") as bar:
        mlp = train_mlp_ladder(P, ws, steps=steps, batch=batch, lr=lr, seed=seed, progress=bar.update)
    mlp.save(out)
    with single_thread():
        g = measure_gamma(mlp, P)
    for w, c, e in zip(g["widths"], g["costs"], g["errors"]):
        click.echo(f"width {w:>5}: {c:>10.0f} FLOPs/sample, RMS eps error {e:.4f}")
    if g["gamma"] is not None:
        click.echo(f"gamma (slope of log cost vs log 1/error) = {g['gamma']:.2f} ± {g['gamma_stderr']:.2f}")
    click.echo(f"wrote {out}")

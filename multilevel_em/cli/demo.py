"""``mlem demo``: the main job (:mod:`multilevel_em.demo`)."""

from __future__ import annotations

import json
import sys

import click

from ._common import command_line, given_options
from ._errors import user_error
from ._paths import SEED, check_output_file, check_output_folder

_HTMC_ONLY = ("n_paths", "out")
_IMAGES_ONLY = ("out_dir", "n", "ladder")


@click.command()
@click.option(
    "--problem",
    type=click.Choice(["images", "htmc"]),
    default="images",
    show_default=True,
    help="images: EM vs ML-EM on a shipped UNet ladder (--ladder; grids, cost table, cost-quality plot). "
    "htmc: calibrate a gamma = 4 synthetic ladder, plan ML-EM, compare with EM at equal error.",
)
@click.option(
    "--quick", is_flag=True, help="Fewer settings and samples (images: 10-20 s; htmc: under 10 s; on 2 CPU cores)."
)
@click.option("--seed", default=0, show_default=True, type=SEED, help="One seed for every run (shared noise).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of the table.")
@click.option(
    "--out-dir",
    default="mlem-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="images: folder for grids.png, cost_quality.png and demo.json.",
)
@click.option(
    "--n", "n", default=None, type=click.IntRange(min=4), help="images: samples per run [default: 48; 8 with --quick]."
)
@click.option(
    "--overwrite", is_flag=True, help="Replace existing outputs (images: in --out-dir; htmc: the --out file)."
)
@click.option(
    "--ladder",
    default="digits",
    show_default=True,
    help="images: a shipped ladder's name (digits, fashion) or a ladder folder with a calibration.",
)
@click.option(
    "--paths", "n_paths", default=256, show_default=True, type=click.IntRange(min=2), help="htmc: sample paths."
)
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="htmc: also write the table as JSON here.")
def demo(
    problem: str, quick: bool, seed: int, as_json: bool, out_dir, n, overwrite: bool, ladder: str, n_paths: int, out
) -> None:
    """The main job. Default (--problem images): sample the shipped digits ladder with EM on the top
    UNet and with ML-EM planned by budget, from one seed; print a cost table and write side-by-side
    grids, a cost-quality plot and a JSON of everything into --out-dir (about a minute on 2 CPU cores).
    --problem htmc: the synthetic gamma = 4 ladder's cost/error table."""
    ctx = click.get_current_context()
    given = given_options(_IMAGES_ONLY if problem == "htmc" else _HTMC_ONLY, ctx)
    if given:
        raise click.UsageError(f"{', '.join(given)}: not an option of --problem {problem}")
    if problem == "htmc":
        check_output_file(out, "--out", overwrite=overwrite)
    else:
        check_output_folder(out_dir, "--out-dir")
        from ..images.ladder import resolve_ladder

        try:
            ladder = resolve_ladder(ladder)
        except ValueError as e:
            raise click.BadParameter(str(e).split(": ", 1)[1], param_hint="--ladder") from None
    echo = (lambda *_: None) if as_json else click.echo
    if problem == "htmc":
        from .._io import write_json
        from ..demo.htmc import run_demo

        result = run_demo(quick=quick, n_paths=n_paths, seed=seed, echo=echo)
        result["command"] = command_line(ctx)
        if out:
            write_json(out, result)
    else:
        from ..demo.images import OutputsExist, run_image_demo

        try:
            result = run_image_demo(
                out_dir,
                n=n,
                seed=seed,
                quick=quick,
                overwrite=overwrite,
                ladder=ladder,
                progress=not as_json,
                command=command_line(ctx),
                echo=echo,
            )
        except (OutputsExist, ValueError) as e:
            raise user_error(e) from None
    if as_json:
        json.dump(result, sys.stdout, indent=2)
        click.echo()

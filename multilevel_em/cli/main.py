"""``mlem``: the command-line front door."""

from __future__ import annotations

import json
import sys

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Multilevel Euler-Maruyama (ML-EM): solve SDEs/ODEs and sample diffusion models with
    ladders of drift approximators, evaluating the expensive level rarely."""


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(__version__)


@main.command()
@click.option("--quick", is_flag=True, help="Fewer settings (a few seconds).")
@click.option("--paths", "n_paths", default=256, show_default=True, type=click.IntRange(min=2), help="Sample paths.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON instead of text.")
def demo(quick: bool, n_paths: int, seed: int, as_json: bool) -> None:
    """ML-EM vs EM with the top level on a built-in HTMC problem: a cost/error table."""
    from ..bench.demo import run_demo

    echo = (lambda *_: None) if as_json else click.echo
    result = run_demo(quick=quick, n_paths=n_paths, seed=seed, echo=echo)
    if as_json:
        json.dump(result, sys.stdout, indent=2)
        click.echo()


if __name__ == "__main__":
    main()

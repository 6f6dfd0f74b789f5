"""``mlem``: the command-line front door. This module only assembles the group; each command lives with
those that do the same kind of work: :mod:`.demo`, :mod:`.calibrate`, :mod:`.mlp` (train-mlp), :mod:`.images`
(train, distill, sample, train-classifier) and :mod:`.bench` (every ``mlem bench`` benchmark)."""

from __future__ import annotations

import click

from .. import __version__
from ._errors import cli_warnings
from .bench import bench
from .calibrate import calibrate
from .demo import demo
from .images import distill_cmd, sample_cmd, train_classifier_cmd, train_cmd
from .mlp import train_mlp


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mlem", message="%(version)s")
def main() -> None:
    """Multilevel Euler-Maruyama (ML-EM): solve SDEs/ODEs and sample diffusion models with
    ladders of drift approximators, evaluating the expensive level rarely."""
    click.get_current_context().with_resource(cli_warnings())  # for every command, until it ends


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(__version__)


for _command in (demo, bench, train_mlp, calibrate, train_cmd, distill_cmd, sample_cmd, train_classifier_cmd):
    main.add_command(_command)


if __name__ == "__main__":
    main()

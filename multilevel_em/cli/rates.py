"""``mlem bench rates``: closed-form, sensitivity-weighted and learned ML-EM rates at equal cost."""

from __future__ import annotations

import click

from ._paths import SEED, check_output_file
from .images import _command_line


@click.command("rates")
@click.option("--quick", is_flag=True, help="The mixture problem only, tiny ladder and sweeps (for tests; under a "
                                            "minute on 2 CPU cores; the full run about 30 minutes).")
@click.option("--problems", default=None,
              help="Comma-separated problems among gaussian, mixture, digits (default: all three; --quick: mixture).")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--out", default="results/rates.json", show_default=True, type=click.Path(dir_okay=False))
@click.option("--plot", "plot_path", default="results/rates.png", show_default=True, type=click.Path(dir_okay=False))
def bench_rates_cmd(quick, problems, seed, out, plot_path):
    """ML-EM inside EM and DPM-Solver++ with closed-form, sensitivity-weighted and learned rates, at equal
    expected cost: the MSE each adds to the top model alone, and each one's gain over the closed form."""
    from ..bench.rates import PROBLEMS, run_rates_bench

    names = None
    if problems is not None:
        names = [p.strip() for p in problems.split(",") if p.strip()]
        if not names or any(p not in PROBLEMS for p in names):
            raise click.BadParameter(f"expected some of {', '.join(PROBLEMS)}, got {problems!r}",
                                     param_hint="--problems")
    check_output_file(out, "--out", suffixes=(".json",))
    check_output_file(plot_path, "--plot", suffixes=(".png",))
    try:
        run_rates_bench(quick=quick, problems=names, seed=seed, out=out, plot_path=plot_path,
                        command=_command_line(), echo=click.echo)
    except FloatingPointError as e:
        raise click.ClickException(f"{e}; nothing was written") from None
    click.echo(f"wrote {out} and {plot_path}")

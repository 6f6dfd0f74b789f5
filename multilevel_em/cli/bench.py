"""``mlem bench NAME``: every benchmark of :data:`multilevel_em.bench.BENCHMARKS`, one subcommand each.

A benchmark whose options the command line declares (``options="click"`` in the registry) has its click
command here; one that parses its own arguments (``options="argv"``) gets a generated command that hands
them to its module's ``main``. :func:`bench` is assembled from the registry, so a benchmark is listed
exactly when it is registered.
"""

from __future__ import annotations

import os

import click

from ..bench.registry import BENCHMARKS, Benchmark, get
from ._common import PLOT_SUFFIXES, command_line, parse_floats
from ._paths import SEED, check_output_file, check_output_folder


def output_options(name: str):
    """``--out``, ``--plot`` and ``--overwrite`` of benchmark ``name``: the defaults are its registered results
    (``results/NAME.json``), ``results/NAME_quick.json`` with ``--quick`` (:meth:`multilevel_em.bench.registry.Benchmark.outputs`)."""
    out, plot = get(name).outputs(quick=False)
    quick_out, quick_plot = get(name).outputs(quick=True)

    def decorate(f):
        for option in reversed(
            (
                click.option(
                    "--out",
                    default=None,
                    type=click.Path(dir_okay=False),
                    help=f"[default: {out}; {quick_out} with --quick]",
                ),
                click.option(
                    "--plot",
                    "plot_path",
                    default=None,
                    type=click.Path(dir_okay=False),
                    help=f"[default: {plot}; {quick_plot} with --quick]",
                ),
                click.option(
                    "--overwrite", is_flag=True, help="Replace existing --out / --plot files (checked before any work)."
                ),
            )
        ):
            f = option(f)
        return f

    return decorate


def resolve_outputs(name, quick, out, plot_path, overwrite, *, out_suffixes=None, plot_suffixes=PLOT_SUFFIXES):
    """The paths benchmark ``name`` writes (the given ones, else its defaults for a quick or a full run), checked
    before any work: writable, of the right suffix, and not there yet unless ``overwrite``."""
    default_out, default_plot = get(name).outputs(quick)
    out, plot_path = out or default_out, plot_path or default_plot
    check_output_file(out, "--out", suffixes=out_suffixes, overwrite=overwrite)
    check_output_file(plot_path, "--plot", suffixes=plot_suffixes, overwrite=overwrite)
    if os.path.abspath(out) == os.path.abspath(plot_path):
        raise click.BadParameter("--out and --plot name the same file", param_hint="--plot")
    return out, plot_path


@click.command("htmc")
@click.option("--gammas", default="1.5,2.5,4", show_default=True, help="Comma-separated cost exponents.")
@click.option(
    "--quick",
    is_flag=True,
    help="A reduced sweep: 6 levels, coarser sweeps (about 25 s on 2 idle CPU cores; the full run about 8 minutes).",
)
@click.option("--paths", "n_paths", default=256, show_default=True, type=click.IntRange(min=16), help="Sample paths.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@output_options("htmc")
def bench_htmc(gammas: str, quick: bool, n_paths: int, seed: int, out, plot_path, overwrite: bool) -> None:
    """Cost-vs-error fronts and fitted cost exponents of EM and ML-EM on the synthetic HTMC family."""
    from ..bench.htmc import run_bench

    values = parse_floats("--gammas", gammas)
    if any(g <= 0 for g in values):
        raise click.BadParameter(f"expected positive exponents, got {gammas!r}", param_hint="--gammas")
    out, plot_path = resolve_outputs("htmc", quick, out, plot_path, overwrite)
    run_bench(gammas=values, quick=quick, out=out, plot_path=plot_path, n_paths=n_paths, seed=seed, echo=click.echo)
    click.echo(f"wrote {out} and {plot_path}")


@click.command("diffusion")
@click.option("--quick", is_flag=True, help="A reduced sweep (under 2 minutes on 2 CPU cores).")
@click.option(
    "--ladders",
    default=None,
    type=click.Path(file_okay=False, exists=True),
    help="Load the ladders from DIR/gaussian and DIR/mixture (folders written by train-mlp) instead of training.",
)
@click.option("--save-ladders", default=None, type=click.Path(file_okay=False), help="Save the trained ladders here.")
@click.option("--train-steps", default=None, type=click.IntRange(min=1), help="Override the training steps per level.")
@click.option(
    "--paths",
    "n_paths",
    default=None,
    type=click.IntRange(min=16),
    help="Override the samples per run (both problems).",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=SEED,
    help="Seeds the problems and the ladder training; run seed i (0-based) is SEED + 1000 i.",
)
@click.option(
    "--seeds",
    "n_seeds",
    default=None,
    type=click.IntRange(min=1),
    help="Run seeds (each redraws x_T, the Brownian path, the level draws and the exact reference "
    "samples; the ladders are trained once) [default: 5; 2 with --quick].",
)
@click.option(
    "--retrain",
    is_flag=True,
    help="Each run seed also retrains the ladders (training seed = run seed; "
    "the problems stay those of --seed). Not with --ladders.",
)
@output_options("diffusion")
def bench_diffusion(
    quick, ladders, save_ladders, train_steps, n_paths, seed, n_seeds, retrain, out, plot_path, overwrite
) -> None:
    """Cost-error Pareto fronts of EM, DDPM, DDIM, DPM-Solver++, T-Stitch and ML-EM with trained MLP ladders
    on a Gaussian (pathwise error) and a Gaussian mixture (sliced Wasserstein, MMD), over several run seeds:
    mean fronts with 95% t-interval bands, costs to reach stated errors and speedups with intervals."""
    from ..bench.diffusion import run_bench

    if retrain and ladders:
        raise click.UsageError("--retrain: not with --ladders (retraining per seed needs the ladders trained here)")
    out, plot_path = resolve_outputs("diffusion", quick, out, plot_path, overwrite)
    check_output_folder(save_ladders, "--save-ladders")
    if save_ladders and not overwrite:
        saved = [os.path.join(save_ladders, k) for k in ("gaussian", "mixture")]
        saved = [d for d in saved if os.path.exists(os.path.join(d, "config.json"))]
        if saved:
            raise click.BadParameter(
                f"{' and '.join(saved)} already hold{'s' if len(saved) == 1 else ''} a ladder; pass --overwrite to "
                "replace it, or give another folder",
                param_hint="--save-ladders",
            )
    overrides = {}
    if train_steps is not None:
        overrides["train_steps"] = train_steps
    if n_paths is not None:
        overrides["n_gauss"] = overrides["n_mix"] = n_paths
    command = command_line()
    run_bench(
        quick=quick,
        out=out,
        plot_path=plot_path,
        ladders=ladders,
        save_ladders=save_ladders,
        seed=seed,
        seeds=n_seeds,
        retrain=retrain,
        overrides=overrides,
        command=command,
        echo=click.echo,
    )
    click.echo(f"wrote {out} and {plot_path}")


@click.command("images")
@click.option(
    "--ladder",
    "ladder_path",
    default="digits",
    show_default=True,
    help="A shipped ladder's name (digits, fashion) or a ladder folder with a calibration. Default outputs: "
    "results/images.json for digits, results/images_fashion.json for fashion.",
)
@click.option("--n", "n", default=None, type=int, help="Samples per run, >= 64 (default 2000; 128 with --quick).")
@click.option(
    "--quick", is_flag=True, help="3 runs of 128 samples, 100 bootstrap resamples (for tests; under a minute)."
)
@click.option("--boot", default=None, type=int, help="Bootstrap resamples, >= 20 (default 1000; 100 with --quick).")
@click.option(
    "--seed", default=0, show_default=True, type=SEED, help="Noise seed (sample i: sample_generators(seed, i))."
)
@click.option(
    "--data-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Fashion-MNIST ladders: the folder of the IDX files (default: Debian's dataset-fashion-mnist folder).",
)
@click.option(
    "--cache-dir",
    default=None,
    type=click.Path(),
    help="Keep every finished run here, so that an interrupted benchmark resumes (and --shard can fill it).",
)
@click.option(
    "--shard",
    default=None,
    help="'i/k': compute only the i-th of k shares of the runs into --cache-dir (one process per core), "
    "then run again without --shard to analyse and write the results.",
)
@output_options("images")
def bench_images_cmd(ladder_path, n, quick, boot, seed, data_dir, cache_dir, shard, out, plot_path, overwrite):
    """Cost (top-level equivalents, CPU seconds) against KID and FD (bootstrap CIs, paired on shared noise) and the
    pathwise error of every sampler with the top UNet, T-Stitch, ML-EM inside each sampler and the planner's
    choice on a UNet ladder, scored with the extractor and reference set of the ladder's data set: one JSON,
    one plot."""
    from ..bench.cache import check_shard
    from ..bench.images import N_MIN

    if n is not None and n < N_MIN:
        raise click.BadParameter(f"expected at least {N_MIN} samples per run, got {n}", param_hint="--n")
    if boot is not None and boot < 20:
        raise click.BadParameter(f"expected at least 20 bootstrap resamples, got {boot}", param_hint="--boot")
    try:
        check_shard(shard)
    except ValueError as e:
        raise click.BadParameter(str(e).split(": ", 1)[1], param_hint="--shard") from None
    if shard is not None and cache_dir is None:
        raise click.UsageError("--shard writes its runs to --cache-dir; give --cache-dir too")
    from ..images.ladder import SHIPPED_LADDERS, resolve_ladder

    name = ladder_path
    try:
        ladder_path = resolve_ladder(ladder_path)
    except ValueError as e:
        raise click.BadParameter(str(e).split(": ", 1)[1], param_hint="--ladder") from None
    if shard is None:
        if name != "digits" and name in SHIPPED_LADDERS:  # another shipped ladder: its own default files
            stem = "_quick" if quick else ""
            out = out or f"results/images_{name}{stem}.json"
            plot_path = plot_path or f"results/images_{name}{stem}.png"
        out, plot_path = resolve_outputs(
            "images", quick, out, plot_path, overwrite, out_suffixes=(".json",), plot_suffixes=(".png",)
        )
    else:
        out = plot_path = None  # a shard writes only into --cache-dir
    from ..bench.images import run_images_bench
    from ..images import CheckpointError

    try:
        run_images_bench(
            ladder_path,
            quick=quick,
            n=n,
            boot=boot,
            seed=seed,
            out=out,
            plot_path=plot_path,
            command=command_line(),
            echo=click.echo,
            data_dir=data_dir,
            cache_dir=cache_dir,
            shard=shard,
        )
    except (ValueError, FloatingPointError, CheckpointError) as e:
        for arg, option in (
            ("cache_dir: ", "--cache-dir"),
            ("dataset: ", "--ladder"),
            ("data_dir: ", "--data-dir"),
            ("n: ", "--n"),
        ):
            if str(e).startswith(arg):
                raise click.BadParameter(str(e)[len(arg) :], param_hint=option) from None
        raise click.ClickException(str(e)) from None
    if out is not None:
        click.echo(f"wrote {out} and {plot_path}")


@click.command("samplers")
@click.option(
    "--ladder",
    "ladder_path",
    default=None,
    type=click.Path(file_okay=False, exists=True),
    help="A ladder folder whose calibration measured samplers (default: the shipped digits ladder).",
)
@click.option("--quick", is_flag=True, help="4 images, budgets 4 and 8, 20-step references (for tests; seconds).")
@click.option("--n", "n", default=None, type=click.IntRange(min=2), help="Images per run (default 32).")
@output_options("samplers")
def bench_samplers_cmd(ladder_path, quick, n, out, plot_path, overwrite):
    """Plans inside each measured sampler against what ML-EM measures there, and against the top UNet alone
    (error to each sampler's converged solution, counted cost and CPU seconds; one JSON, one plot)."""
    from ..bench.common import DIGITS_LADDER
    from ..bench.samplers import run_sampler_bench

    out, plot_path = resolve_outputs(
        "samplers", quick, out, plot_path, overwrite, out_suffixes=(".json",), plot_suffixes=(".png",)
    )
    ladder_path = ladder_path or DIGITS_LADDER
    try:
        run_sampler_bench(
            os.path.normpath(ladder_path),
            quick=quick,
            n=n,
            out=out,
            plot_path=plot_path,
            command=command_line(),
            echo=click.echo,
        )
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {out} and {plot_path}")


@click.command("rates")
@click.option(
    "--quick",
    is_flag=True,
    help="The mixture problem only, tiny ladder and sweeps (for tests; under a "
    "minute on 2 CPU cores; the full run about 30 minutes).",
)
@click.option(
    "--problems",
    default=None,
    help="Comma-separated problems among gaussian, mixture, digits (default: all three; --quick: mixture).",
)
@click.option("--seed", default=0, show_default=True, type=SEED)
@output_options("rates")
def bench_rates_cmd(quick, problems, seed, out, plot_path, overwrite):
    """ML-EM inside EM and DPM-Solver++ with closed-form, sensitivity-weighted and learned rates, at equal
    expected cost: the MSE each adds to the top model alone, and each one's gain over the closed form."""
    from ..bench.rates import PROBLEMS, run_rates_bench

    names = None
    if problems is not None:
        names = [p.strip() for p in problems.split(",") if p.strip()]
        if not names or any(p not in PROBLEMS for p in names):
            raise click.BadParameter(
                f"expected some of {', '.join(PROBLEMS)}, got {problems!r}", param_hint="--problems"
            )
    out, plot_path = resolve_outputs(
        "rates", quick, out, plot_path, overwrite, out_suffixes=(".json",), plot_suffixes=(".png",)
    )
    try:
        run_rates_bench(
            quick=quick,
            problems=names,
            seed=seed,
            out=out,
            plot_path=plot_path,
            command=command_line(),
            echo=click.echo,
        )
    except FloatingPointError as e:
        raise click.ClickException(f"{e}; nothing was written") from None
    click.echo(f"wrote {out} and {plot_path}")


def _argv_command(b: Benchmark) -> click.Command:
    """``mlem bench NAME ARGS...`` for a benchmark that parses its own arguments: ARGS go to its module's
    ``main`` unchanged (``--help`` too: the benchmark's own help)."""

    @click.command(
        b.name,
        help=f"{b.summary} Its options: mlem bench {b.name} --help.",
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args) -> None:
        b.load().main(list(args), command=command_line())

    return command


#: The benchmarks whose options are declared here, by registry name.
DECLARED = {
    "htmc": bench_htmc,
    "diffusion": bench_diffusion,
    "images": bench_images_cmd,
    "samplers": bench_samplers_cmd,
    "rates": bench_rates_cmd,
}


@click.group()
def bench() -> None:
    """Benchmarks that write results/*.json and plots."""


for _b in BENCHMARKS.values():
    bench.add_command(DECLARED[_b.name] if _b.options == "click" else _argv_command(_b))
if {n for n, b in BENCHMARKS.items() if b.options == "click"} != set(DECLARED):
    raise RuntimeError("multilevel_em.cli.bench: the declared commands differ from the registry's 'click' benchmarks")

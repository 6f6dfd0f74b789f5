"""``mlem``: the command-line front door."""

from __future__ import annotations

import json
import os
import sys

import click

from .. import __version__
from ._errors import cli_warnings, user_error
from ._paths import POSITIVE, SEED, check_output_file, check_output_folder

PLOT_SUFFIXES = (".png", ".pdf", ".svg")


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


_HTMC_ONLY = ("n_paths", "out")
_IMAGES_ONLY = ("out_dir", "n", "overwrite")


@main.command()
@click.option("--problem", type=click.Choice(["images", "htmc"]), default="images", show_default=True,
              help="images: EM vs ML-EM on the shipped digits UNet ladder (grids, cost table, cost-quality plot). "
                   "htmc: calibrate a gamma = 4 synthetic ladder, plan ML-EM, compare with EM at equal error.")
@click.option("--quick", is_flag=True, help="Fewer settings and samples (images: 10-20 s; htmc: under 10 s; on 2 CPU cores).")
@click.option("--seed", default=0, show_default=True, type=SEED, help="One seed for every run (shared noise).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of the table.")
@click.option("--out-dir", default="mlem-demo", show_default=True, type=click.Path(file_okay=False),
              help="images: folder for grids.png, cost_quality.png and demo.json.")
@click.option("--n", "n", default=None, type=click.IntRange(min=4),
              help="images: samples per run [default: 48; 8 with --quick].")
@click.option("--overwrite", is_flag=True, help="images: replace existing outputs in --out-dir.")
@click.option("--paths", "n_paths", default=256, show_default=True, type=click.IntRange(min=2),
              help="htmc: sample paths.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="htmc: also write the table as JSON here.")
def demo(problem: str, quick: bool, seed: int, as_json: bool, out_dir, n, overwrite: bool, n_paths: int, out) -> None:
    """The main job. Default (--problem images): sample the shipped digits ladder with EM on the top
    UNet and with ML-EM planned by budget, from one seed; print a cost table and write side-by-side
    grids, a cost-quality plot and a JSON of everything into --out-dir (about a minute on 2 CPU cores).
    --problem htmc: the synthetic gamma = 4 ladder's cost/error table."""
    ctx = click.get_current_context()
    wrong = _IMAGES_ONLY if problem == "htmc" else _HTMC_ONLY
    given = [p for p in ctx.command.params if p.name in wrong
             and ctx.get_parameter_source(p.name) != click.core.ParameterSource.DEFAULT]
    if given:
        names = ", ".join(p.opts[0] for p in given)
        raise click.UsageError(f"{names}: not an option of --problem {problem}")
    if problem == "htmc":
        check_output_file(out, "--out")
    else:
        check_output_folder(out_dir, "--out-dir")
    echo = (lambda *_: None) if as_json else click.echo
    if problem == "htmc":
        from ..bench.common import write_json
        from ..bench.demo import run_demo

        result = run_demo(quick=quick, n_paths=n_paths, seed=seed, echo=echo)
        result["command"] = ("mlem demo --problem htmc" + (" --quick" if quick else "")
                             + (f" --paths {n_paths}" if n_paths != 256 else ""))
        if out:
            write_json(out, result)
    else:
        from ..bench.image_demo import OutputsExist, run_image_demo

        try:
            result = run_image_demo(out_dir, n=n, seed=seed, quick=quick, overwrite=overwrite, progress=not as_json,
                                    command=_command_line(ctx, "mlem demo"), echo=echo)
        except (OutputsExist, ValueError) as e:
            raise user_error(e) from None
    if as_json:
        json.dump(result, sys.stdout, indent=2)
        click.echo()


def _parse_floats(name: str, text: str) -> list:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=name) from None
    if not values:
        raise click.BadParameter("expected at least one number", param_hint=name)
    return values


@main.group()
def bench() -> None:
    """Benchmarks that write results/*.json and plots."""


@bench.command("htmc")
@click.option("--gammas", default="1.5,2.5,4", show_default=True, help="Comma-separated cost exponents.")
@click.option("--quick", is_flag=True, help="A reduced sweep: 6 levels, coarser sweeps (about 25 s on 2 idle CPU "
                                            "cores; the full run about 8 minutes).")
@click.option("--paths", "n_paths", default=256, show_default=True, type=click.IntRange(min=16), help="Sample paths.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--out", default="results/htmc.json", show_default=True, type=click.Path(dir_okay=False))
@click.option("--plot", "plot_path", default="results/htmc.png", show_default=True, type=click.Path(dir_okay=False))
def bench_htmc(gammas: str, quick: bool, n_paths: int, seed: int, out: str, plot_path: str) -> None:
    """Cost-vs-error fronts and fitted cost exponents of EM and ML-EM on the synthetic HTMC family."""
    from ..bench.htmc import run_bench

    values = _parse_floats("--gammas", gammas)
    if any(g <= 0 for g in values):
        raise click.BadParameter(f"expected positive exponents, got {gammas!r}", param_hint="--gammas")
    check_output_file(out, "--out")
    check_output_file(plot_path, "--plot", suffixes=PLOT_SUFFIXES)
    run_bench(gammas=values, quick=quick, out=out, plot_path=plot_path, n_paths=n_paths, seed=seed, echo=click.echo)
    click.echo(f"wrote {out} and {plot_path}")


def _command_line(ctx: click.Context, prefix: str) -> str:
    """The command as typed, rebuilt from the options that differ from their defaults (for results files)."""
    parts = [prefix]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if not isinstance(param, click.Option) or value is None or value is False:
            continue
        if param.is_flag:
            parts.append(param.opts[0])
        elif ctx.get_parameter_source(param.name) != click.core.ParameterSource.DEFAULT:
            parts.append(f"{param.opts[0]} {value}")
    return " ".join(parts)


@bench.command("diffusion")
@click.option("--quick", is_flag=True, help="A reduced sweep (under 2 minutes on 2 CPU cores).")
@click.option("--ladders", default=None, type=click.Path(file_okay=False, exists=True),
              help="Load the ladders from DIR/gaussian and DIR/mixture (folders written by train-mlp) instead of training.")
@click.option("--save-ladders", default=None, type=click.Path(file_okay=False), help="Save the trained ladders here.")
@click.option("--train-steps", default=None, type=click.IntRange(min=1), help="Override the training steps per level.")
@click.option("--paths", "n_paths", default=None, type=click.IntRange(min=16),
              help="Override the samples per run (both problems).")
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="Seeds the problems and the ladder training; run seed i (0-based) is SEED + 1000 i.")
@click.option("--seeds", "n_seeds", default=None, type=click.IntRange(min=1),
              help="Run seeds (each redraws x_T, the Brownian path, the level draws and the exact reference "
                   "samples; the ladders are trained once) [default: 5; 2 with --quick].")
@click.option("--retrain", is_flag=True, help="Each run seed also retrains the ladders (training seed = run seed; "
                                               "the problems stay those of --seed). Not with --ladders.")
@click.option("--out", default="results/diffusion.json", show_default=True, type=click.Path(dir_okay=False))
@click.option("--plot", "plot_path", default="results/diffusion.png", show_default=True, type=click.Path(dir_okay=False))
def bench_diffusion(quick, ladders, save_ladders, train_steps, n_paths, seed, n_seeds, retrain, out, plot_path) -> None:
    """Cost-error Pareto fronts of EM, DDPM, DDIM, DPM-Solver++, T-Stitch and ML-EM with trained MLP ladders
    on a Gaussian (pathwise error) and a Gaussian mixture (sliced Wasserstein, MMD), over several run seeds:
    mean fronts with 95% t-interval bands, costs to reach stated errors and speedups with intervals."""
    from ..bench.diffusion import run_bench

    if retrain and ladders:
        raise click.UsageError("--retrain: not with --ladders (retraining per seed needs the ladders trained here)")
    check_output_file(out, "--out")
    check_output_file(plot_path, "--plot", suffixes=PLOT_SUFFIXES)
    check_output_folder(save_ladders, "--save-ladders")
    overrides = {}
    if train_steps is not None:
        overrides["train_steps"] = train_steps
    if n_paths is not None:
        overrides["n_gauss"] = overrides["n_mix"] = n_paths
    command = _command_line(click.get_current_context(), "mlem bench diffusion")
    run_bench(quick=quick, out=out, plot_path=plot_path, ladders=ladders, save_ladders=save_ladders, seed=seed,
              seeds=n_seeds, retrain=retrain, overrides=overrides, command=command, echo=click.echo)
    click.echo(f"wrote {out} and {plot_path}")


@main.command("train-mlp")
@click.option("--problem", type=click.Choice(["gaussian", "mixture"]), required=True,
              help="Gaussian with a full covariance, or a Gaussian mixture (4 components).")
@click.option("--dim", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for config.json and level_k.safetensors.")
@click.option("--steps", default=2000, show_default=True, type=click.IntRange(min=1), help="Optimizer steps per level.")
@click.option("--widths", default="32,64,128,256", show_default=True, help="Comma-separated hidden widths, cheapest first.")
@click.option("--batch", default=512, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=2e-3, show_default=True, type=POSITIVE)
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seeds the problem, the weights and the data.")
def train_mlp(problem, dim, out, steps, widths, batch, lr, seed) -> None:
    """Train a ladder of MLP noise predictors on exact samples of a problem, save it, report its gamma."""
    from tqdm import tqdm

    from ..bench.common import single_thread
    from ..diffusion.mlp import measure_gamma, train_mlp_ladder
    from ..problems.gaussian import gaussian, gaussian_mixture

    ws = [int(w) for w in _parse_floats("--widths", widths)]
    if any(w < 1 for w in ws):
        raise click.BadParameter(f"expected positive widths, got {widths!r}", param_hint="--widths")
    check_output_folder(out, "--out")
    if any(b < a for a, b in zip(ws, ws[1:])):
        raise click.BadParameter(f"expected nondecreasing widths, cheapest first, got {widths!r}", param_hint="--widths")
    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, "config.json")):
        raise click.BadParameter(f"{out} exists, is not empty and holds no MLP ladder (config.json); refusing to "
                                 "write into it", param_hint="--out")
    P = gaussian(dim, seed=seed) if problem == "gaussian" else gaussian_mixture(dim, seed=seed)
    # Small layers: one thread is as fast as several and does not fight other work for the cores.
    with single_thread(), tqdm(total=steps * len(ws), desc=f"train {problem} d={dim}", unit="step") as bar:
        mlp = train_mlp_ladder(P, ws, steps=steps, batch=batch, lr=lr, seed=seed, progress=bar.update)
    mlp.save(out)
    with single_thread():
        g = measure_gamma(mlp, P)
    for w, c, e in zip(g["widths"], g["costs"], g["errors"]):
        click.echo(f"width {w:>5}: {c:>10.0f} FLOPs/sample, RMS eps error {e:.4f}")
    if g["gamma"] is not None:
        click.echo(f"gamma (slope of log cost vs log 1/error) = {g['gamma']:.2f} ± {g['gamma_stderr']:.2f}")
    click.echo(f"wrote {out}")


def _write_calibration(cal, plan, out, plot_path, as_json) -> None:
    """Save and plot a calibration where asked, then print it (and its plan) as text or JSON."""
    if out:
        cal.save(out)
    if plot_path:
        cal.plot(plot_path)
    if as_json:
        json.dump({"calibration": cal.to_dict(), "plan": plan.to_dict() if plan else None}, sys.stdout, indent=2)
        click.echo()
        return
    click.echo(cal.summary())
    if plan is not None:
        click.echo()
        click.echo(plan.message)
    for path in (out, plot_path):
        if path:
            click.echo(f"wrote {path}")


def _calibrate_ladder(ladder_dir, n_images, budget, target, seed, out, as_json, plot_path, samplers=None,
                      sampler_images=32, timing="given", trace=False) -> None:
    """mlem calibrate --ladder DIR: MultilevelPipeline.calibrate on a ladder folder, saved beside it; with
    --samplers, then each sampler's step-error curve and ML-EM's randomization gain inside it."""
    import os

    import torch

    from ..images import CheckpointError, MultilevelPipeline

    if target is not None:
        raise click.BadParameter("an image ladder is planned by budget (top-level equivalents per sample)",
                                 param_hint="--target")
    try:
        pipe = MultilevelPipeline.from_pretrained(ladder_dir)
    except (CheckpointError, ValueError, OSError) as e:
        raise user_error(e, hint="--ladder") from None
    out = out or os.path.join(ladder_dir, "calibration.json")
    check_output_file(out, "--out")
    if samplers is not None:
        from ..calibration.samplers import check_samplers

        try:
            samplers = check_samplers([s.strip() for s in samplers.split(",") if s.strip()])
        except ValueError as e:
            raise click.BadParameter(str(e).removeprefix("samplers: "), param_hint="--samplers") from None
    torch.set_num_threads(1)
    # The ladder's declared costs are its FLOPs: "given" and "flops" are the same here.
    cal = pipe.calibrate(n=n_images, generator=torch.Generator().manual_seed(seed),
                         timing="wall" if timing == "wall" else "flops", trace=trace)
    if samplers is not None:
        from tqdm import tqdm

        from ..calibration.samplers import CURVE_STEPS as DEFAULT_STEPS, GAIN_STEPS, fit_table

        runs = len(samplers) * (1 + len(DEFAULT_STEPS) + len(GAIN_STEPS))  # reference, curve, ML-EM per sampler
        with tqdm(total=runs, desc="samplers", unit="run") as bar:
            fits = pipe.calibrate_samplers(samplers, n=sampler_images, seed=seed,
                                           progress=lambda what: (bar.set_postfix_str(what), bar.update()))
        click.echo(fit_table(fits))
    plan = None
    if budget is not None:
        try:
            plan = pipe.plan(budget, sampler=samplers[0] if samplers else None)
        except ValueError as e:
            raise user_error(e, hint="--budget") from None
    _write_calibration(cal, plan, out, plot_path, as_json)


@main.command()
@click.option("--problem", type=click.Choice(["htmc"]), default="htmc", show_default=True,
              help="The built-in ladder to calibrate.")
@click.option("--ladder", "ladder_dir", default=None, type=click.Path(file_okay=False),
              help="Calibrate a trained image ladder folder instead (mlem train / mlem distill output); the "
                   "calibration is written to DIR/calibration.json unless --out is given.")
@click.option("--images", "n_images", default=16, show_default=True, type=click.IntRange(min=8),
              help="With --ladder: noise images whose reverse-SDE trajectories are measured.")
@click.option("--samplers", default=None,
              help="With --ladder: also measure these samplers (comma-separated: em, ddim, euler_ode, dpmpp_2m), "
                   "so that plans inside them compare ML-EM with the top model alone in every measured sampler "
                   "(a few minutes per sampler on a CPU); --budget then plans inside the first.")
@click.option("--sampler-images", default=32, show_default=True, type=click.IntRange(min=2),
              help="With --samplers: noise images per run.")
@click.option("--gamma", default=4.0, show_default=True, type=POSITIVE)
@click.option("--levels", default=5, show_default=True, type=click.IntRange(min=2))
@click.option("--paths", "n_paths", default=128, show_default=True, type=click.IntRange(min=8))
@click.option("--timing", type=click.Choice(["given", "wall", "flops"]), default="given", show_default=True,
              help="Level costs: the ladder's declared costs, measured wall-clock, or counted FLOPs (--ladder: its "
                   "declared costs are its FLOPs).")
@click.option("--trace", is_flag=True,
              help="With --ladder: measure the TorchScript-traced UNets (what `mlem sample --trace` runs); with "
                   "--timing wall the plans then use their real per-call costs.")
@click.option("--target", type=POSITIVE, default=None,
              help="Plan for this RMS pathwise error.")
@click.option("--budget", type=POSITIVE, default=None,
              help="Plan for this cost per sample, in top-level equivalents.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Save the calibration as JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print the calibration (and plan) as JSON.")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="Write a PNG of delta_l(t) and of error against cost.")
def calibrate(problem, ladder_dir, n_images, samplers, sampler_images, gamma, levels, n_paths, timing, trace, target,
              budget, seed, out, as_json,
              plot_path) -> None:
    """Measure a ladder (costs, level differences, gamma) and plan ML-EM for a target or budget."""
    import torch

    from .. import calibrate as run_calibration
    from ..problems import htmc

    if target is not None and budget is not None:
        raise click.UsageError("give at most one of --target and --budget")
    check_output_file(out, "--out")
    check_output_file(plot_path, "--plot", suffixes=(".png",))
    if ladder_dir is not None:
        _calibrate_ladder(ladder_dir, n_images, budget, target, seed, out, as_json, plot_path, samplers, sampler_images,
                          timing, trace)
        return
    if samplers is not None:
        raise click.BadParameter("only with --ladder (an image ladder's samplers)", param_hint="--samplers")
    if trace:
        raise click.BadParameter("only with --ladder (an image ladder's UNets are traced)", param_hint="--trace")
    if gamma * (levels - 1) > 1000:  # level l costs 2^(gamma (l - 1)): beyond 2^1000 floats overflow
        raise click.BadParameter(f"level costs 2^(gamma (levels - 1)) = 2^{gamma * (levels - 1):.4g} overflow; "
                                 "keep --gamma times (--levels - 1) at most 1000", param_hint="--gamma")
    P = htmc(gamma, levels=levels, seed=seed)
    x0 = P.initial_state(n_paths, seed=seed + 1)
    cal = run_calibration(P.ladder, x0, t0=P.t0, t1=P.t1, diffusion=P.diffusion, reference=P.true_drift,
                          timing=timing, generator=torch.Generator().manual_seed(seed + 2))
    plan = None
    if target is not None or budget is not None:
        try:
            plan = cal.plan(target=target, budget=budget)
        except ValueError as e:
            raise user_error(e) from None
    _write_calibration(cal, plan, out, plot_path, as_json)


# Image commands (UNet ladders): `mlem train`, `mlem sample`, kept in their own module.
from .images import (  # noqa: E402
    bench_images_cmd, bench_samplers_cmd, distill_cmd, sample_cmd, train_classifier_cmd, train_cmd)

main.add_command(train_cmd)
main.add_command(distill_cmd)
main.add_command(sample_cmd)
main.add_command(train_classifier_cmd)
bench.add_command(bench_images_cmd)
bench.add_command(bench_samplers_cmd)

from .rates import bench_rates_cmd  # noqa: E402

bench.add_command(bench_rates_cmd)


if __name__ == "__main__":
    main()

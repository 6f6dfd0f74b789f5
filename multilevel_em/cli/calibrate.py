"""``mlem calibrate``: measure a ladder (the synthetic HTMC one, or a trained image ladder) and plan ML-EM."""

from __future__ import annotations

import json
import os
import sys

import click

from .._text import plural
from ..diffusion.registry import measurable_samplers, schedule_samplers
from ._common import given_options
from ._errors import user_error
from ._paths import POSITIVE, SEED, check_output_file, inside_package

#: Below this many --sampler-images the measured step-error curves and gains are noisy enough that the
#: verdicts they give (which sampler, ML-EM or the top model alone wins at a budget) can change with the seed.
STEADY_SAMPLER_IMAGES = 16

#: Options of the synthetic HTMC ladder only (refused with --ladder), and of an image ladder only.
_HTMC_ONLY = ("problem", "gamma", "levels", "n_paths", "target")
_LADDER_ONLY = ("n_images", "samplers", "sampler_images", "schedules", "trace")


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


def _calibrate_ladder(
    ladder_dir,
    n_images,
    budget,
    seed,
    out,
    as_json,
    plot_path,
    samplers=None,
    sampler_images=32,
    timing="given",
    trace=False,
    overwrite=False,
    schedules=None,
) -> None:
    """mlem calibrate --ladder DIR: MultilevelPipeline.calibrate on a ladder folder, saved beside it (or to --out);
    with --samplers, then each sampler's step-error curve and ML-EM's randomization gain inside it; with
    --schedules, the schedule planner's measurements inside each of those samplers. The samplers (and schedule
    measurements) that the ladder's calibration measured before and that this run does not measure again are
    kept."""
    import torch

    from ..images import CheckpointError, MultilevelPipeline

    try:
        pipe = MultilevelPipeline.from_pretrained(ladder_dir)
    except (CheckpointError, ValueError, OSError) as e:
        raise user_error(e, hint="--ladder") from None
    if out is None:
        if inside_package(ladder_dir):
            raise click.BadParameter(
                f"{ladder_dir} is a ladder shipped inside the installed package; its calibration.json is not "
                "rewritten: give --out FILE for the new calibration",
                param_hint="--out",
            )
        out = os.path.join(ladder_dir, "calibration.json")
        if os.path.exists(out) and not overwrite:
            raise click.BadParameter(
                f"{out} exists; pass --overwrite to replace it (samplers it measured and this run does not measure "
                "again are kept), or --out FILE to write the new calibration elsewhere",
                param_hint="--out",
            )
    check_output_file(out, "--out", overwrite=overwrite)
    if budget is not None:  # refused before the calibration is spent, as pipe.plan would refuse it after
        cheapest = pipe.ladder.costs[0] / pipe.ladder.costs[-1]
        if budget < cheapest:
            raise click.BadParameter(
                f"{budget:.4g} top-level equivalents per sample is too small: one step of the cheapest level "
                f"({pipe.ladder.names[0]}) alone costs {cheapest:.4g}",
                param_hint="--budget",
            )
    earlier = pipe.calibration  # DIR/calibration.json as it was, if any
    if samplers is not None:
        from ..calibration.samplers import check_samplers
        from ..diffusion.registry import measurable_samplers

        try:
            samplers = tuple(
                check_samplers([s.strip() for s in samplers.split(",") if s.strip()], measurable_samplers())
            )
        except ValueError as e:
            raise click.BadParameter(str(e).removeprefix("samplers: "), param_hint="--samplers") from None
        if sampler_images < STEADY_SAMPLER_IMAGES:
            click.echo(
                f"warning: --sampler-images {sampler_images}: each sampler's errors and ML-EM's gain are RMS over "
                f"{plural(sampler_images, 'image')}, so the verdicts they give (which of ML-EM and the top model "
                f"alone wins, in which sampler) may change with --seed; {STEADY_SAMPLER_IMAGES} or more "
                "(default 32) give steadier ones",
                err=True,
            )
    if schedules is not None:
        from ..calibration.samplers import check_samplers
        from ..diffusion.registry import schedule_samplers

        try:
            schedules = tuple(
                check_samplers(
                    [s.strip() for s in schedules.split(",") if s.strip()], dict.fromkeys(schedule_samplers(), "ode")
                )
            )
        except ValueError as e:
            raise click.BadParameter(str(e).removeprefix("samplers: "), param_hint="--schedules") from None
    torch.set_num_threads(1)
    # The ladder's declared costs are its FLOPs: "given" and "flops" are the same here.
    cal = pipe.calibrate(
        n=n_images,
        generator=torch.Generator().manual_seed(seed),
        timing="wall" if timing == "wall" else "flops",
        trace=trace,
    )
    if samplers is not None:
        from .._progress import progress_bar
        from ..calibration.samplers import CURVE_STEPS as DEFAULT_STEPS
        from ..calibration.samplers import GAIN_STEPS, fit_table

        runs = len(samplers) * (1 + len(DEFAULT_STEPS) + len(GAIN_STEPS))  # reference, curve, ML-EM per sampler
        with progress_bar(total=runs, desc="samplers", unit="run") as bar:
            fits = pipe.calibrate_samplers(
                samplers, n=sampler_images, seed=seed, progress=lambda what: (bar.set_postfix_str(what), bar.update())
            )
        click.echo(fit_table(fits))
    if schedules is not None:
        from .._progress import progress_bar

        with progress_bar(total=len(schedules), desc="schedules", unit="sampler") as bar:
            measured = pipe.calibrate_schedules(
                schedules, n=sampler_images, seed=seed, progress=lambda what: (bar.set_postfix_str(what), bar.update())
            )
        for name, m in measured.items():
            click.echo(f"schedules in {name}: {m.pipeline.runs} pipeline runs of {sampler_images} images measured")
    kept_schedules = {} if earlier is None else {k: v for k, v in earlier.schedules.items() if k not in cal.schedules}
    if kept_schedules:
        cal.schedules.update(kept_schedules)
        click.echo(
            f"kept the schedule measurements of {', '.join(kept_schedules)} from "
            f"{os.path.join(ladder_dir, 'calibration.json')} (--schedules {','.join(kept_schedules)} measures them "
            "again)",
            err=True,
        )
    kept = {} if earlier is None else {k: v for k, v in earlier.samplers.items() if k not in cal.samplers}
    if kept:  # measured before (minutes each) and not measured again: a new level calibration does not void them
        cal.samplers.update(kept)
        click.echo(
            f"kept the measurements of {plural(len(kept), 'sampler')} ({', '.join(kept)}) from "
            f"{os.path.join(ladder_dir, 'calibration.json')} (--samplers {','.join(kept)} measures them again)",
            err=True,
        )
    plan = None
    if budget is not None:
        try:
            plan = pipe.plan(budget, sampler=samplers[0] if samplers else None)
        except ValueError as e:
            raise user_error(e, hint="--budget") from None
    _write_calibration(cal, plan, out, plot_path, as_json)


@click.command()
@click.option(
    "--problem",
    type=click.Choice(["htmc"]),
    default="htmc",
    show_default=True,
    help="The built-in ladder to calibrate.",
)
@click.option(
    "--ladder",
    "ladder_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Calibrate a trained image ladder folder instead (mlem train / mlem distill output); the "
    "calibration is written to DIR/calibration.json unless --out is given.",
)
@click.option(
    "--images",
    "n_images",
    default=16,
    show_default=True,
    type=click.IntRange(min=8),
    help="With --ladder: noise images whose reverse-SDE trajectories are measured.",
)
@click.option(
    "--samplers",
    default=None,
    help=f"With --ladder: also measure these samplers (comma-separated: {', '.join(measurable_samplers())}), "
    "so that plans inside them compare ML-EM with the top model alone in every measured sampler "
    "(a few minutes per sampler on a CPU); --budget then plans inside the first.",
)
@click.option(
    "--schedules",
    default=None,
    help=f"With --ladder: also measure, inside these samplers (comma-separated: {', '.join(schedule_samplers())}), "
    "what the schedule planner needs (the top model alone's step-error curve, the output's sensitivity, "
    "switches to cheaper levels: 35 runs per sampler on a 4-level ladder), so that `mlem sample --method auto` picks among "
    "the top model alone, switches, ML-EM and hybrids in every measured sampler.",
)
@click.option(
    "--sampler-images",
    default=32,
    show_default=True,
    type=click.IntRange(min=2),
    help="With --samplers or --schedules: noise images per run.",
)
@click.option("--gamma", default=4.0, show_default=True, type=POSITIVE, help="Without --ladder: the cost exponent.")
@click.option(
    "--levels", default=5, show_default=True, type=click.IntRange(min=2), help="Without --ladder: the number of levels."
)
@click.option(
    "--paths",
    "n_paths",
    default=128,
    show_default=True,
    type=click.IntRange(min=8),
    help="Without --ladder: sample paths measured.",
)
@click.option(
    "--timing",
    type=click.Choice(["given", "wall", "flops"]),
    default="given",
    show_default=True,
    help="Level costs: the ladder's declared costs, measured wall-clock, or counted FLOPs (--ladder: its "
    "declared costs are its FLOPs).",
)
@click.option(
    "--trace",
    is_flag=True,
    help="With --ladder: measure the TorchScript-traced UNets (what `mlem sample --trace` runs); with "
    "--timing wall the plans then use their real per-call costs.",
)
@click.option(
    "--target",
    type=POSITIVE,
    default=None,
    help="Without --ladder: plan for this RMS pathwise error (an image ladder is planned by --budget).",
)
@click.option("--budget", type=POSITIVE, default=None, help="Plan for this cost per sample, in top-level equivalents.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option(
    "--out",
    default=None,
    type=click.Path(dir_okay=False),
    help="Save the calibration as JSON (with --ladder: default DIR/calibration.json, except for a ladder shipped "
    "in the package).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the calibration (and plan) as JSON.")
@click.option(
    "--plot",
    "plot_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write a PNG of delta_l(t) and of error against cost.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing --out / --plot file (with --ladder and no --out: DIR/calibration.json); checked "
    "before any work.",
)
def calibrate(
    problem,
    ladder_dir,
    n_images,
    samplers,
    schedules,
    sampler_images,
    gamma,
    levels,
    n_paths,
    timing,
    trace,
    target,
    budget,
    seed,
    out,
    as_json,
    plot_path,
    overwrite,
) -> None:
    """Measure a ladder (costs, level differences, gamma) and plan ML-EM for a target or budget."""
    import torch

    from .. import calibrate as run_calibration
    from ..problems import htmc

    if target is not None and budget is not None:
        raise click.UsageError("give at most one of --target and --budget")
    if ladder_dir is not None:
        wrong = given_options(_HTMC_ONLY)
        if wrong:
            raise click.UsageError(
                f"{', '.join(wrong)}: only without --ladder (the built-in HTMC ladder); an image ladder is "
                "measured with --images and planned by --budget"
            )
    else:
        wrong = given_options(_LADDER_ONLY)
        if wrong:
            raise click.UsageError(f"{', '.join(wrong)}: only with --ladder (a trained image ladder)")
    if samplers is None and schedules is None and given_options(("sampler_images",)):
        raise click.UsageError(
            "--sampler-images: only with --samplers or --schedules (the images of each sampler's runs)"
        )
    check_output_file(out, "--out", overwrite=overwrite)
    check_output_file(plot_path, "--plot", suffixes=(".png",), overwrite=overwrite)
    if out is not None and plot_path is not None and os.path.abspath(out) == os.path.abspath(plot_path):
        raise click.BadParameter("--out and --plot name the same file", param_hint="--plot")
    if ladder_dir is not None:
        _calibrate_ladder(
            ladder_dir,
            n_images,
            budget,
            seed,
            out,
            as_json,
            plot_path,
            samplers,
            sampler_images,
            timing,
            trace,
            overwrite,
            schedules,
        )
        return
    if gamma * (levels - 1) > 1000:  # level l costs 2^(gamma (l - 1)): beyond 2^1000 floats overflow
        raise click.BadParameter(
            f"level costs 2^(gamma (levels - 1)) = 2^{gamma * (levels - 1):.4g} overflow; "
            "keep --gamma times (--levels - 1) at most 1000",
            param_hint="--gamma",
        )
    P = htmc(gamma, levels=levels, seed=seed)
    x0 = P.initial_state(n_paths, seed=seed + 1)
    cal = run_calibration(
        P.ladder,
        x0,
        t0=P.t0,
        t1=P.t1,
        diffusion=P.diffusion,
        reference=P.true_drift,
        timing=timing,
        generator=torch.Generator().manual_seed(seed + 2),
    )
    plan = None
    if target is not None or budget is not None:
        try:
            plan = cal.plan(target=target, budget=budget)
        except ValueError as e:
            raise user_error(e) from None
    _write_calibration(cal, plan, out, plot_path, as_json)

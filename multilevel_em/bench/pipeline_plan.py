"""Schedule plans on a stock diffusers pipeline running trained UNets: predicted error against measured.

Each shipped ladder (digits and Fashion-MNIST: four ``UNet2DModel`` levels each) as one ``MultilevelModel``
inside the stock ``DDPMPipeline`` with DDIM and DPM-Solver++ 2M (the deterministic schedulers whose ``step`` the
pipeline can drive), and with UniPC in a short scheduler loop of the kind users write (its ``step`` takes no
generator, so the stock pipeline cannot drive it); ``output_type="np"`` images in [0, 1]. For each scheduler: ``model.calibrate(run)`` with
``run(num_inference_steps)`` once, then at each budget ``model.plan(budget)`` and every candidate it
reports is run: its measured error (RMS over images and pixels against the top model with
``reference_steps`` calls from the same noise; ML-EM over several draws of its levels) beside the predicted
one; the pick against the top model alone at floor(budget) calls (paired difference of per-image mean
squared errors, with its standard error); T-Stitch's published default (the cheapest level for the first
40% of the calls) at the same budget; and the calls the top model alone needs for the pick's error (on the
measured step-error curve). Then the distributional criterion with DPM-Solver++ on a larger batch, on each
ladder: ``model.calibrate(run, features=...)`` with the shipped classifier's features and
``model.plan(budget, criterion="distribution")``: every candidate and switch scored by the Frechet distance of
its features to the reference run's, with paired bootstrap intervals.

    mlem bench pipeline-plan          # writes results/pipeline_plan.json (about an hour on one thread)
    mlem bench pipeline-plan --quick  # 8 images, small step counts (the test)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from typing import Dict, Optional

import numpy as np
import torch

from .._io import write_json
from ..calibration.schedules import step_error
from ..diffusion import MultilevelModel
from ..diffusion.samplers import make_scheduler
from ..engine import CallSchedule
from ..images.ladder import load_ladder, resolve_ladder
from .common import device_name
from .outputs import add_overwrite_argument, check_outputs, default_outputs

SETTINGS = {
    "full": {
        "n": 64,
        "steps": (4, 8, 16, 32),
        "reference_steps": 64,
        "budgets": (5, 10, 20),
        "repeats": 4,
        "blocks": 4,
        "schedulers": ("ddim", "dpmpp_2m", "unipc"),
        "ladders": ("digits", "fashion"),
    },
    "quick": {
        "n": 8,
        "steps": (2, 4),
        "reference_steps": 8,
        "budgets": (3,),
        "repeats": 2,
        "blocks": 2,
        "schedulers": ("dpmpp_2m", "unipc"),
        "ladders": ("digits",),
    },
}
#: The distributional criterion's run: one ladder and scheduler, a batch large enough for a Frechet distance.
DISTRIBUTION = {
    "full": tuple(
        {
            "ladder": name,
            "scheduler": "dpmpp_2m",
            "n": 512,
            "steps": (4, 8, 16),
            "reference_steps": 32,
            "budgets": (5, 10),
            "boot": 500,
            "blocks": 4,
        }
        for name in ("digits", "fashion")
    ),
    "quick": (
        {
            "ladder": "digits",
            "scheduler": "dpmpp_2m",
            "n": 16,
            "steps": (2, 4),
            "reference_steps": 8,
            "budgets": (3,),
            "boot": 50,
            "blocks": 2,
        },
    ),
}
#: T-Stitch's published default: the cheapest level for the first 40% of the calls.
TSTITCH_FRACTION = 0.4


def _calls_for_error(meas, error: float) -> Optional[float]:
    """The calls at which the top model alone's measured curve reaches ``error`` (log-log interpolation);
    None outside the measured range."""
    n = np.log(np.asarray(meas.steps, dtype=np.float64))
    e = np.asarray(meas.step_errors, dtype=np.float64)
    if np.any(e <= 0) or np.any(np.diff(e) >= 0):  # not a decreasing curve: no inverse
        return None
    le = np.log(e)
    if not le[-1] <= math.log(error) <= le[0]:
        return None
    return float(np.exp(np.interp(math.log(error), le[::-1], n[::-1])))


def _per_image_mse(images: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return ((images - ref) ** 2).reshape(images.shape[0], -1).mean(1)


#: Schedulers whose ``step`` takes a generator: the stock ``DDPMPipeline`` drives them.
STOCK = ("ddim", "dpmpp_2m", "ddpm")


def stock_pipeline(ladder, scheduler: str, n: int):
    """``ladder`` as one MultilevelModel in a pipeline and ``run(num_inference_steps)``: n images from the same noise
    every time, as ``output_type="np"`` gives them ((n, H, W, C) in [0, 1]). Schedulers in :data:`STOCK` run in the
    stock ``DDPMPipeline``; the others (UniPC: its ``step`` takes no generator) in a short scheduler loop written
    as a user writes one. Returns ``(pipe, model, run)`` (``pipe`` is None for the loop)."""
    from diffusers import DDPMPipeline

    sched = make_scheduler(scheduler, ladder.schedule)
    model = MultilevelModel(ladder.unets, costs=ladder.costs, names=ladder.names, scheduler=sched)
    if scheduler not in STOCK:
        unet = ladder.unets[-1]
        shape = (n, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)

        @torch.no_grad()
        def run(num_inference_steps):
            sched.set_timesteps(num_inference_steps)
            x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * sched.init_noise_sigma
            for t in sched.timesteps:
                x = sched.step(model(sched.scale_model_input(x, t), t).sample, t, x).prev_sample
            return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()

        return None, model, run
    pipe = DDPMPipeline(unet=ladder.unets[-1], scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    pipe.unet = model

    def run(num_inference_steps):
        return pipe(
            batch_size=n,
            generator=torch.Generator().manual_seed(0),
            num_inference_steps=num_inference_steps,
            output_type="np",
        ).images

    return pipe, model, run


def run_scheduler(name: str, ladder, cfg: Dict, echo=print, label: str = "") -> Dict:
    """Calibrate, plan and measure on one scheduler; returns its results."""
    pipe, model, run = stock_pipeline(ladder, name, cfg["n"])
    K = len(ladder.unets)
    t0 = time.process_time()
    model.calibrate(run, steps=cfg["steps"], reference_steps=cfg["reference_steps"], blocks=cfg["blocks"])
    meas = model.pipeline_measurements
    calib_seconds = time.process_time() - t0
    echo(f"{label} {name}: calibrated in {calib_seconds:.0f} CPU s ({meas.runs} pipeline runs)")

    def measure(schedule: CallSchedule, calls: int, repeats: int):
        model.set_schedule(schedule)
        per = []
        cost = []
        for r in range(repeats):
            model.generator = torch.Generator().manual_seed(1000 + r)
            model.reset()
            per.append(_per_image_mse(run(calls), ref))
            cost.append(model.report()["top_equivalents_per_image"])
        per = np.mean(per, 0)
        return per, float(np.sqrt(per.mean())), float(np.mean(cost))

    model.set_schedule(CallSchedule.top_alone(cfg["reference_steps"], K))
    ref = run(cfg["reference_steps"])
    budgets = []
    for budget in cfg["budgets"]:
        plan = model.plan(budget)
        rows = []
        per_image = {}
        for c in plan.candidates:
            random = any(len(s) > 1 for s in c.schedule.levels)
            per, err, cost = measure(c.schedule, c.num_inference_steps, cfg["repeats"] if random else 1)
            per_image[c.name] = per
            rows.append(
                {
                    "name": c.name,
                    "kind": c.kind,
                    "num_inference_steps": c.num_inference_steps,
                    "predicted_error": c.predicted_error,
                    "measured_error": err,
                    "ratio_predicted_over_measured": c.predicted_error / err if err > 0 else None,
                    "predicted_cost": c.predicted_cost,
                    "measured_cost": cost,
                    "repeats": cfg["repeats"] if random else 1,
                }
            )
        # T-Stitch's default at the same budget: the most calls whose switch fits it
        ts = None
        for calls in range(int(cfg["reference_steps"]), 0, -1):
            s = CallSchedule.switch(calls, K, 0, TSTITCH_FRACTION)
            if s.expected_cost(model.costs) <= budget * (1 + 1e-12):
                per, err, cost = measure(s, calls, 1)
                ts = {"num_inference_steps": calls, "measured_error": err, "measured_cost": cost}
                break
        choice = next(r for r in rows if r["name"] == plan.choice.name)
        top = next((r for r in rows if r["kind"] == "top"), None)
        comparison = None
        if top is not None:
            d = per_image[plan.choice.name] - per_image[top["name"]]
            se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
            comparison = {
                "pick_minus_top_alone_mse": float(d.mean()),
                "se": se,
                "worse_by_more_than_2_se": bool(d.mean() > 2 * se),
            }
        if plan.choice.kind == "top":
            speedup = 1.0
            calls_needed = float(plan.choice.num_inference_steps)
        else:
            calls_needed = _calls_for_error(meas, choice["measured_error"])
            speedup = None if calls_needed is None else calls_needed / choice["measured_cost"]
        budgets.append(
            {
                "budget": budget,
                "message": plan.message,
                "choice": plan.choice.name,
                "candidates": rows,
                "tstitch_default": ts,
                "pick_vs_top_alone": comparison,
                "top_alone_calls_for_pick_error": calls_needed,
                "speedup": speedup,
            }
        )
        ratios = ", ".join(f"{r['name']}: {r['ratio_predicted_over_measured']:.2f}" for r in rows)
        echo(f"{label} {name} budget {budget}: picked {plan.choice.name}; predicted/measured {ratios}")
    return {
        "ladder": label,
        "scheduler": name,
        "scheduler_class": type(model.scheduler).__name__,
        "calibration_cpu_seconds": calib_seconds,
        "measurements": meas.to_dict(),
        "top_alone_step_errors": dict(zip(map(str, meas.steps), meas.step_errors)),
        "interpolated_top_alone_error": {str(b): step_error(meas, int(b)) for b in cfg["budgets"]},
        "budgets": budgets,
    }


def run_distribution(cfg: Dict, echo=print) -> Dict:
    """The distributional criterion on one shipped ladder (module docstring)."""
    from ..images.metrics import load_digit_classifier, load_fashion_classifier

    ladder = load_ladder(resolve_ladder(cfg["ladder"]))
    classifier = load_digit_classifier() if cfg["ladder"] == "digits" else load_fashion_classifier()
    width = 64 if cfg["ladder"] == "digits" else 128

    def features(images):  # (n, H, W, 1) in [0, 1] -> the classifier's (n, width) penultimate features
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() * 2 - 1
        return classifier.features(x).double()

    _, model, run = stock_pipeline(ladder, cfg["scheduler"], cfg["n"])
    t0 = time.process_time()
    model.calibrate(
        run, steps=cfg["steps"], reference_steps=cfg["reference_steps"], blocks=cfg["blocks"], features=features
    )
    calib_seconds = time.process_time() - t0
    echo(f"distribution, {cfg['ladder']}: calibrated in {calib_seconds:.0f} CPU s")
    budgets = []
    for budget in cfg["budgets"]:
        pathwise = model.plan(budget)
        plan = model.plan(budget, criterion="distribution", boot=cfg["boot"])
        rows = [
            {
                "name": c.name,
                "kind": c.kind,
                "num_inference_steps": c.num_inference_steps,
                "predicted_cost": c.predicted_cost,
                "predicted_error": c.predicted_error,
                "fd": c.fd,
                "fd_ci": list(c.fd_ci),
                "fd_minus_top": c.fd_minus_top,
                "fd_minus_top_ci": None if c.fd_minus_top_ci is None else list(c.fd_minus_top_ci),
            }
            for c in list(plan.candidates)
            + [c for c in plan.switches if c.name not in {p.name for p in plan.candidates}]
        ]
        top = next(r for r in rows if r["kind"] == "top")
        # where a schedule reaches the top model alone's distance at a lower cost: the saving, with the interval
        cheaper_not_worse = [
            {
                "name": r["name"],
                "cost_over_top_alone": r["predicted_cost"] / top["predicted_cost"],
                "fd_minus_top": r["fd_minus_top"],
                "fd_minus_top_ci": r["fd_minus_top_ci"],
            }
            for r in rows
            if r["predicted_cost"] < top["predicted_cost"] and r["fd_minus_top_ci"][0] <= 0  # not resolved worse
        ]
        budgets.append(
            {
                "budget": budget,
                "pathwise_choice": pathwise.choice.name,
                "choice": plan.choice.name,
                "message": plan.message,
                "candidates": rows,
                "cheaper_than_top_alone_and_not_resolved_worse": cheaper_not_worse,
            }
        )
        echo(f"distribution, {cfg['ladder']}, budget {budget}: {plan.message}")
    return {
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "features": f"the shipped {cfg['ladder']} classifier's penultimate layer ({width}-d), of the images "
        "mapped to [-1, 1]",
        "reference": "the top model alone with reference_steps steps on the same noise (the calibration batch)",
        "calibration_cpu_seconds": calib_seconds,
        "budgets": budgets,
    }


def main(argv=None, *, command: Optional[str] = None) -> dict:
    """``mlem bench pipeline-plan [ARGS]``: the argument list (default ``sys.argv[1:]``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(
        prog="mlem bench pipeline-plan",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="8 images, steps 2 and 4, one budget (seconds; the test)")
    ap.add_argument(
        "--out", default=None, help="JSON (default results/pipeline_plan.json; results/pipeline_plan_quick.json)"
    )
    ap.add_argument(
        "--ladders",
        default=None,
        help="comma-separated shipped ladders to run (default: digits,fashion; quick: digits)",
    )
    ap.add_argument(
        "--schedulers", default=None, help="comma-separated: ddim, dpmpp_2m, unipc (default all three; quick: 2)"
    )
    ap.add_argument(
        "--steps",
        default=None,
        help="comma-separated call counts the calibration measures the top model alone at (default 4,8,16,32), "
        "each below the reference's 64",
    )
    ap.add_argument(
        "--no-distribution", action="store_true", help="skip the distributional criterion's runs (512 images)"
    )
    add_overwrite_argument(ap)
    args = ap.parse_args(argv)
    cfg = dict(SETTINGS["quick" if args.quick else "full"])
    for key, known in (("ladders", ("digits", "fashion")), ("schedulers", ("ddim", "dpmpp_2m", "unipc"))):
        given = getattr(args, key)
        if given is not None:
            names = tuple(dict.fromkeys(v.strip() for v in given.split(",") if v.strip()))
            bad = [v for v in names if v not in known]
            if bad or not names:
                ap.error(f"--{key}: expected comma-separated names among {', '.join(known)}, got {given!r}")
            cfg[key] = names
    if args.steps is not None:
        try:
            steps = tuple(sorted({int(v) for v in args.steps.split(",") if v.strip()}))
        except ValueError:
            ap.error(f"--steps: expected comma-separated integers, got {args.steps!r}")
        if not steps or steps[0] < 1 or steps[-1] >= cfg["reference_steps"] or len(steps) < 2:
            ap.error(
                f"--steps: expected 2 or more call counts in [1, {cfg['reference_steps'] - 1}], got {args.steps!r}"
            )
        cfg["steps"] = steps
    out = args.out or default_outputs("pipeline-plan", args.quick)[0]
    check_outputs(ap, [out], args.overwrite)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    per = []
    with torch.no_grad():
        for label in cfg["ladders"]:
            ladder = load_ladder(resolve_ladder(label))
            for name in cfg["schedulers"]:
                per.append(run_scheduler(name, ladder, cfg, echo=lambda s: print(s, file=sys.stderr), label=label))
        distribution = [
            run_distribution(c, echo=lambda s: print(s, file=sys.stderr))
            for c in ([] if args.no_distribution else DISTRIBUTION["quick" if args.quick else "full"])
        ]
    result = {
        "benchmark": "pipeline_plan",
        "command": command or shlex.join(["mlem", "bench", "pipeline-plan", *argv]),
        "quick": bool(args.quick),
        "ladders": [f"{name} (shipped)" for name in cfg["ladders"]],
        "pipeline": "diffusers DDPMPipeline (DDIM, DPM-Solver++ 2M) or a user-written scheduler loop (UniPC), "
        "output_type='np' (images in [0, 1]); the ladder as one MultilevelModel",
        "error": "RMS over images and pixels against the top model alone with reference_steps calls, same noise",
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "device": "cpu",
        "device_name": device_name(torch.device("cpu")),
        "threads": 1,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "wall_seconds": time.perf_counter() - t0,
        "schedulers": per,
        "distribution": distribution,
    }
    write_json(out, result, indent=1)
    json.dump({k: v for k, v in result.items() if k not in ("schedulers", "distribution")}, sys.stdout, indent=1)
    print()
    return result


if __name__ == "__main__":
    main()

"""Is a distilled ladder better for ML-EM than one trained on data, at equal widths and iterations?

The shipped digits ladder (widths 4, 8, 16, 32; every level trained 1200 iterations on digits by
``mlem train``) against a ladder distilled from its top UNet (level_4, width 32) by
:func:`multilevel_em.images.distill.distill_ladder`: students of widths 4, 8, 16, the same
optimizer settings (AdamW 2e-3, batch 32, EMA 0.995, seed 0), digits as x_0, and the shipped
top UNet as the distilled ladder's top level. Both ladders therefore share their top model.

Measured, side by side in one run:

* **eps distance to the top**: RMS over 256 fixed digits x 6 fixed times
  (t = 0.02, 0.1, 0.3, 0.5, 0.7, 0.9) x pixels of ``eps_l(x_t, t) - eps_top(x_t, t)``, with
  ``x_t = alpha x_0 + sigma eps`` on one fixed noise draw; per width, the ratio distilled / shipped.
  The distillation is resumed stage by stage (``--stages``, e.g. 300, 600, 1200, 2400
  iterations: resuming is exact, so stage s is the ladder an uninterrupted s-iteration run
  gives), which shows how the distance falls with more iterations.
* **delta_l(t) and gamma** from each ladder's calibration (``MultilevelPipeline.calibrate``,
  seed 0; the shipped ladder's own ``calibration.json``), the distilled one at the last stage.
* **ML-EM's cost at equal path error**: both ladders sample the same ``--n`` images from one seed
  (same initial noise and Brownian path) with ML-EM planned for budgets 8, 16, 32, 64; the path
  error is the RMS L2 distance to EM with the (shared) top UNet at 256 steps, as in ``mlem demo``.
  For each shipped run, the distilled ladder's cost to reach the same path error is interpolated
  (log-log) between its runs; the ratio distilled / shipped is the target (<= 0.7).
* **A third ladder, data-free**: the same students distilled with the same settings and stages, but
  with x_0 = 1024 samples of the teacher itself (DPM-Solver++ 2M, 20 steps, cached in the work
  folder) instead of the digits; measured exactly as the digits-distilled one.
* **Distributional quality at equal budget**: ML-EM at budget 16 (top-level equivalents per
  sample), 512 samples from one seed on each of the three ladders, KID against the 1797 digits on
  the shipped digit classifier's features (``multilevel_em.images.metrics``, as ``mlem bench
  images``): se from 8 disjoint chunks; a ladder's difference to the shipped one with the paired
  se of the chunk-wise differences (same noise), "resolved" when it exceeds 2 paired se. The top
  model's own KID (its DPM-Solver++ samples, the data-free x_0) is given for scale.
* ``--extend ITERS`` (after a run): continue both distilled ladders to ITERS iterations and add
  their eps distances as further stages (the ML-EM and KID comparisons stay at the run's stage).

Usage::

    mlem bench distill                 # writes results/distill.json and results/distill.png
    mlem bench distill --extend 2400   # then: distances at 2400 iterations, added to the same files
    mlem bench distill --quick         # a smoke run: results/distill_quick.json and .png
    (an existing results file is replaced only with --overwrite; --extend updates the run's own)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

from .._io import write_json
from .common import DIGITS_LADDER, em_cost_at, single_thread
from .outputs import add_overwrite_argument, check_outputs, default_outputs

SHIPPED = DIGITS_LADDER
TIMES = (0.02, 0.1, 0.3, 0.5, 0.7, 0.9)
SETTINGS = {
    "full": {
        "widths": (4, 8, 16),
        "stages": (300, 600, 1200),
        "n_eval": 256,
        "n": 48,
        "ref_steps": 256,
        "budgets": (8, 16, 32, 64),
        "cal_n": 16,
        "cal_steps": 144,
        "df_samples": 1024,
        "df_sampler_steps": 20,
        "kid_budget": 16,
        "kid_n": 512,
    },
    "quick": {
        "widths": (4,),
        "stages": (3, 6),
        "n_eval": 16,
        "n": 4,
        "ref_steps": 16,
        "budgets": (8, 16),
        "cal_n": 8,
        "cal_steps": 16,
        "df_samples": 16,
        "df_sampler_steps": 3,
        "kid_budget": 8,
        "kid_n": 16,
    },
}


def eps_distances(ladder, x0: torch.Tensor, seed: int) -> Dict[str, List[float]]:
    """Per level: RMS of eps_l - eps_top over x0 x TIMES x pixels (one fixed noise), overall and per time."""
    models = ladder.eps_models()
    g = torch.Generator().manual_seed(seed)
    per_time = [[0.0] * len(TIMES) for _ in models]
    with torch.no_grad():
        for j, t in enumerate(TIMES):
            eps = torch.randn(x0.shape, generator=g)
            xt = ladder.schedule.add_noise(x0, eps, t)
            top = models[-1](xt, t)
            for i, m in enumerate(models):
                per_time[i][j] = float((m(xt, t) - top).pow(2).mean().sqrt())
    overall = [math.sqrt(sum(v * v for v in row) / len(TIMES)) for row in per_time]
    return {"overall": overall, "per_time": per_time}


def path_runs(pipe, budgets, n, seed, x_ref) -> List[Dict]:
    """ML-EM at each budget on the same noise; path error (RMS L2 to x_ref) and cost."""
    rows = []
    for b in budgets:
        out = pipe(n, method="mlem", budget=b, generator=torch.Generator().manual_seed(seed))
        if not torch.isfinite(out.x).all():
            raise ValueError(f"ML-EM at budget {b} produced NaN or inf")
        d2 = (out.x.double() - x_ref.double()).reshape(n, -1).pow(2).sum(1)
        err = float(d2.mean().sqrt())
        se = float((d2 / (2 * err)).std() / math.sqrt(n)) if err > 0 else 0.0
        rows.append(
            {
                "budget": b,
                "top_equivalents_per_sample": out.report["top_equivalents_per_sample"],
                "path_error": err,
                "path_error_se": se,
                "steps": out.report["steps"],
                "levels": out.report.get("plan", {}).get("levels"),
                "evaluations_per_sample": {
                    f"L{lv['level']}": lv["evaluations_per_sample"] for lv in out.report["levels"]
                },
            }
        )
    return rows


def kid_runs(pipes: Dict, budget: float, n: int, seed: int, reference: torch.Tensor) -> Dict:
    """KID (shipped classifier's features, vs ``reference`` images) of ML-EM at ``budget`` on each ladder,
    from the same noise; standard errors from 8 disjoint chunks, differences to the shipped ladder paired
    chunk by chunk (the convention of bench/chunks.py). ``resolved``: |difference| > 2 paired se."""
    from ..images.metrics import kid_unbiased, load_digit_classifier
    from .chunks import CHUNKS, chunk_kids, sample_sd

    clf = load_digit_classifier()
    with torch.no_grad():
        ref_feats = clf.features(reference)
    rows = {}
    for name, pipe in pipes.items():
        out = pipe(n, method="mlem", budget=budget, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            kid = kid_unbiased(clf.features(out.x.clamp(-1, 1)), ref_feats)
        chunks = chunk_kids(clf, out.x, ref_feats)
        rows[name] = {
            "kid": kid,
            "kid_se": sample_sd(chunks) / math.sqrt(CHUNKS),
            "kid_chunks": chunks,
            "top_equivalents_per_sample": out.report["top_equivalents_per_sample"],
        }
    base = rows["shipped"]["kid_chunks"]
    for name, r in rows.items():
        if name == "shipped":
            continue
        diffs = [a - b for a, b in zip(r["kid_chunks"], base)]
        r["kid_diff_to_shipped"] = r["kid"] - rows["shipped"]["kid"]
        r["kid_diff_se"] = sample_sd(diffs) / math.sqrt(CHUNKS)
        r["resolved"] = abs(r["kid_diff_to_shipped"]) > 2 * r["kid_diff_se"]
    return {"budget": budget, "n": n, "reference": f"the {len(reference)} digits images", "ladders": rows}


def cost_ratios(runs: Dict, against: str = "shipped") -> Dict[str, List[Dict]]:
    """For each run of ``against``: every other ladder's ML-EM cost at the same path error (log-log
    interpolation between its runs; None if not bracketed) and the ratio to ``against``'s cost."""
    out = {}
    for name, rows in runs.items():
        if name == against:
            continue
        curve = [(r["top_equivalents_per_sample"], r["path_error"]) for r in rows]
        out[name] = []
        for r in runs[against]:
            c = em_cost_at(curve, r["path_error"])
            out[name].append(
                {
                    "budget": r["budget"],
                    "shipped_cost": r["top_equivalents_per_sample"],
                    "shipped_path_error": r["path_error"],
                    "cost_at_same_error": c,
                    "cost_ratio": None if c is None else c / r["top_equivalents_per_sample"],
                }
            )
    return out


def _check_work(work: str, first_stage: int) -> None:
    """A stage below what a work folder already holds would measure the later weights."""
    done = os.path.join(work, "level_1", "training_state.json")
    if os.path.isfile(done):
        with open(done) as f:
            it = json.load(f).get("iteration", 0)
        if it > first_stage:
            raise ValueError(
                f"work: {work} is already trained to {it} iterations, past the first stage "
                f"{first_stage}; delete it or choose another --work"
            )


def _stage_row(ladder, x0, seed, s, shipped_d, t0) -> Dict:
    d = eps_distances(ladder, x0, seed + 1)
    return {
        "iters": s,
        "eps_distance": d["overall"][:-1],
        "eps_distance_per_time": d["per_time"][:-1],
        "ratio_to_shipped": [a / b for a, b in zip(d["overall"][:-1], shipped_d)],
        "seconds": time.perf_counter() - t0,
    }


def _echo_stage(echo, label, row) -> None:
    echo(
        f"{label} {row['iters']:>5} iters: distance "
        + ", ".join(f"{v:.4f}" for v in row["eps_distance"])
        + "; ratio to shipped "
        + ", ".join(f"{v:.3f}" for v in row["ratio_to_shipped"])
        + f" ({row['seconds']:.0f} s)"
    )


def _distill_stages(teacher, data, work, cfg, seed, x0, shipped_d, label, echo) -> tuple:
    from ..images.distill import distill_ladder

    rows, ladder = [], None
    for s in cfg["stages"]:
        t0 = time.perf_counter()
        ladder = distill_ladder(
            teacher, work, data, widths=list(cfg["widths"]), iters=s, seed=seed, save_every=100, loss_plot=False
        )
        rows.append(_stage_row(ladder, x0, seed, s, shipped_d, t0))
        _echo_stage(echo, label, rows[-1])
    return rows, ladder


def run(
    quick: bool = False,
    out: str = "results/distill.json",
    plot: str = "results/distill.png",
    work: str = "build/distill_bench",
    seed: int = 0,
    stages: Sequence[int] = None,
    echo=print,
    command: Optional[str] = None,
) -> Dict:
    from ..images import MultilevelPipeline, load_digits
    from ..images.distill import load_teacher, teacher_samples

    cfg = dict(SETTINGS["quick" if quick else "full"])
    if stages:
        cfg["stages"] = tuple(sorted(int(s) for s in stages))
    for p in (out, plot):  # output paths checked before the work
        d = os.path.dirname(os.path.abspath(p))
        if not os.path.isdir(d):
            raise ValueError(f"out/plot: folder {d} does not exist")
    works = {"distilled": os.path.join(work, "digits"), "data_free": os.path.join(work, "data_free")}
    for w in works.values():
        _check_work(w, cfg["stages"][0])
    t_start = time.perf_counter()
    shipped = MultilevelPipeline.from_pretrained(SHIPPED)
    teacher = load_teacher(SHIPPED)
    digits = load_digits(16)
    x0 = digits.x[torch.randperm(len(digits.x), generator=torch.Generator().manual_seed(seed))[: cfg["n_eval"]]]
    ws = list(cfg["widths"])
    shipped_idx = [shipped.ladder.widths.index(w) for w in ws]
    d_shipped = eps_distances(shipped.ladder, x0, seed + 1)
    shipped_d = [d_shipped["overall"][i] for i in shipped_idx]
    result = {
        "widths": ws,
        "times": list(TIMES),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "shipped": {
            "eps_distance": shipped_d,
            "eps_distance_per_time": [d_shipped["per_time"][i] for i in shipped_idx],
            "iters": shipped.ladder.info.get("training", {}).get("iters"),
        },
    }
    echo(f"shipped eps distance to the top, widths {ws}: " + ", ".join(f"{v:.4f}" for v in shipped_d))
    result["stages"], distilled_ladder = _distill_stages(
        teacher, digits, works["distilled"], cfg, seed, x0, shipped_d, "distilled (digits x0)", echo
    )
    t0 = time.perf_counter()
    samples = teacher_samples(
        teacher, works["data_free"], cfg["df_samples"], sampler="dpmpp_2m", steps=cfg["df_sampler_steps"], seed=seed
    )
    result["data_free"] = {"x0": samples.name, "samples_seconds": time.perf_counter() - t0}
    echo(f"{samples.name}: {time.perf_counter() - t0:.0f} s")
    result["data_free"]["stages"], free_ladder = _distill_stages(
        teacher, samples, works["data_free"], cfg, seed, x0, shipped_d, "data-free", echo
    )
    pipes = {
        "shipped": shipped,
        "distilled": MultilevelPipeline(distilled_ladder),
        "data_free": MultilevelPipeline(free_ladder),
    }
    for name in ("distilled", "data_free"):
        pipes[name].calibrate(n=cfg["cal_n"], steps=cfg["cal_steps"], generator=torch.Generator().manual_seed(seed))
        pipes[name].save_calibration(works[name])
    if quick:  # the shipped calibration is the full one; quick mode recalibrates it as cheaply as the distilled one
        shipped.calibrate(n=cfg["cal_n"], steps=cfg["cal_steps"], generator=torch.Generator().manual_seed(seed))
    # Every ladder is planned by the same model: the calibration's a h model of EM (the shipped calibration also
    # measured samplers, which would plan its ML-EM runs inside EM's measured curve instead).
    shipped.calibration.samplers = {}
    # All ladders share the top UNet: one reference serves them all.
    ref = shipped(cfg["n"], method="em", steps=cfg["ref_steps"], generator=torch.Generator().manual_seed(seed)).x
    runs = {k: path_runs(p, cfg["budgets"], cfg["n"], seed, ref) for k, p in pipes.items()}
    ratios = cost_ratios(runs)
    kid = kid_runs(pipes, cfg["kid_budget"], cfg["kid_n"], seed, digits.x)
    with torch.no_grad():  # the top model itself (its dpmpp_2m samples, the data-free x_0), for scale
        from ..images.metrics import kid_unbiased, load_digit_classifier

        clf = load_digit_classifier()
        kid["top_dpmpp_2m"] = kid_unbiased(clf.features(samples.x[: cfg["kid_n"]]), clf.features(digits.x))
    cals = {k: p.calibration for k, p in pipes.items()}
    result.update(
        {
            "runs": runs,
            "comparisons": ratios["distilled"],
            "comparisons_data_free": ratios["data_free"],
            "kid": kid,
            "calibration": {
                k: {
                    "times": [float(t) for t in cal.times],
                    "delta": cal.deltas.tolist(),
                    "gamma": cal.gamma,
                    "gamma_se": cal.gamma_se,
                    "names": list(cal.names),
                }
                for k, cal in cals.items()
            },
            "command": command or "mlem bench distill" + (" --quick" if quick else ""),
            "machine": f"{platform.processor() or platform.machine()}, 1 torch thread",
            "quick": quick,
            "seed": seed,
            "total_seconds": time.perf_counter() - t_start,
            "metrics": {
                "eps_distance": "RMS over images x times x pixels of eps_level - eps_top at fixed x_t",
                "path_error": f"RMS over {cfg['n']} samples of the L2 distance to EM-top at {cfg['ref_steps']} steps "
                "on the same noise and Brownian path",
                "cost_ratio": "a ladder's ML-EM top-level equivalents to reach the shipped run's path error "
                "(log-log interpolation between its runs) / the shipped run's; None: not bracketed",
                "kid": f"unbiased KID of {cfg['kid_n']} ML-EM samples at budget {cfg['kid_budget']} vs the digits, "
                "shipped classifier's 64-d features; se from 8 chunks; differences paired by chunk "
                "(same noise); resolved: |diff| > 2 paired se",
            },
        }
    )
    for name, rows in ratios.items():
        for c in rows:
            echo(
                f"{name} budget {c['budget']:>3}: shipped {c['shipped_cost']:.1f} top-eq at path error "
                f"{c['shipped_path_error']:.3f}; {name} needs {c['cost_at_same_error']}; ratio {c['cost_ratio']}"
            )
    for name, r in kid["ladders"].items():
        extra = (
            ""
            if name == "shipped"
            else (
                f", diff {r['kid_diff_to_shipped']:+.3f} +- {r['kid_diff_se']:.3f} "
                f"({'resolved' if r['resolved'] else 'not resolved'})"
            )
        )
        echo(f"KID {name} (ML-EM budget {kid['budget']}): {r['kid']:.3f} +- {r['kid_se']:.3f}{extra}")
    for k, cal in cals.items():
        echo(f"{k}: gamma {cal.gamma} +- {cal.gamma_se}")
    _plot(result, plot)
    write_json(out, result)
    echo(f"wrote {out} and {plot} ({result['total_seconds']:.0f} s)")
    return result


def extend(
    iters: int,
    out: str = "results/distill.json",
    plot: str = "results/distill.png",
    work: str = "build/distill_bench",
    ladders: Sequence[str] = ("digits", "data_free"),
    echo=print,
    command: Optional[str] = None,
) -> Dict:
    """Continue the distilled ``ladders`` of a finished run (``work``, ``out``) to ``iters`` iterations and add
    their eps distances to the top as further stages ("extended": the ML-EM and KID comparisons stay at
    the run's last stage). Resuming is exact, so this is the ladder an uninterrupted run would give."""
    from ..images import load_digits
    from ..images.distill import load_teacher, teacher_samples

    with open(out) as f:
        result = json.load(f)
    cfg, seed = result["settings"], result["seed"]
    if iters <= cfg["stages"][-1]:
        raise ValueError(f"iters: expected more than the run's last stage {cfg['stages'][-1]}, got {iters}")
    teacher, digits = load_teacher(SHIPPED), load_digits(16)
    x0 = digits.x[torch.randperm(len(digits.x), generator=torch.Generator().manual_seed(seed))[: cfg["n_eval"]]]
    samples = teacher_samples(
        teacher,
        os.path.join(work, "data_free"),
        cfg["df_samples"],
        sampler="dpmpp_2m",
        steps=cfg["df_sampler_steps"],
        seed=seed,
    )
    ext = dict(cfg, stages=(iters,))
    for name, data, rows in (
        ("digits", digits, result["stages"]),
        ("data_free", samples, result["data_free"]["stages"]),
    ):
        if name not in ladders:
            continue
        rows[:] = [r for r in rows if r["iters"] < iters]
        new, _ = _distill_stages(
            teacher, data, os.path.join(work, name), ext, seed, x0, result["shipped"]["eps_distance"], name, echo
        )
        rows.extend(dict(r, extended=True) for r in new)
    result["extended_command"] = command or f"mlem bench distill --extend {iters} --ladders {','.join(ladders)}"
    _plot(result, plot)
    write_json(out, result)
    echo(f"wrote {out} and {plot}")
    return result


def _plot(result: Dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(19, 4))
    for i, w in enumerate(result["widths"]):
        (line,) = ax[0].plot(
            [s["iters"] for s in result["stages"]],
            [s["eps_distance"][i] for s in result["stages"]],
            "o-",
            label=f"distilled (digits) w={w}",
        )
        free = result.get("data_free", {}).get("stages", [])
        if free:
            ax[0].plot(
                [s["iters"] for s in free],
                [s["eps_distance"][i] for s in free],
                "s:",
                color=line.get_color(),
                label=f"data-free w={w}",
            )
        ax[0].axhline(result["shipped"]["eps_distance"][i], color=line.get_color(), ls="--", label=f"shipped w={w}")
    ax[0].set(xlabel="distillation iterations", ylabel="eps RMS distance to the top", xscale="log", yscale="log")
    ax[0].legend(fontsize=6)
    styles = {"shipped": "--", "distilled": "-", "data_free": ":"}
    for k, ls in styles.items():
        cal = result["calibration"].get(k)
        if cal is None:
            continue
        for j, name in enumerate(cal["names"][1:]):
            ax[1].plot(cal["times"], [row[j] for row in cal["delta"]], ls, label=f"{k} {name}")
        r = result["runs"][k]
        ax[2].errorbar(
            [x["top_equivalents_per_sample"] for x in r],
            [x["path_error"] for x in r],
            yerr=[x["path_error_se"] for x in r],
            fmt="o" + ls,
            label=f"{k} (gamma {cal['gamma']:.2f})" if cal["gamma"] is not None else k,
        )
    ax[1].set(xlabel="reverse time s", ylabel="delta_l(s)", yscale="log")
    ax[1].legend(fontsize=6)
    ax[2].set(xlabel="ML-EM cost (top-level equivalents per sample)", ylabel="path error", xscale="log", yscale="log")
    ax[2].legend(fontsize=7)
    kid = result.get("kid")
    if kid:
        names = list(kid["ladders"])
        ax[3].bar(
            names,
            [kid["ladders"][k]["kid"] for k in names],
            yerr=[kid["ladders"][k]["kid_se"] for k in names],
            capsize=4,
            color=["C0", "C1", "C2"][: len(names)],
        )
        if kid.get("top_dpmpp_2m") is not None:
            ax[3].axhline(kid["top_dpmpp_2m"], color="k", ls="--", label="top model, DPM-Solver++ 20 steps")
            ax[3].legend(fontsize=7)
        ax[3].set(ylabel=f"KID vs digits (ML-EM, budget {kid['budget']}, n={kid['n']})")
    fig.tight_layout()
    from .._io import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def main(argv=None, *, command: Optional[str] = None) -> None:
    """``mlem bench distill [ARGS]``: the argument list (default ``sys.argv[1:]``); ``command``: the command
    line recorded in the results (default: ``mlem bench distill`` and the arguments)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = command or shlex.join(["mlem", "bench", "distill", *argv])
    p = argparse.ArgumentParser(prog="mlem bench distill", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--out", default=None, help="JSON (default results/distill.json; results/distill_quick.json with --quick)"
    )
    p.add_argument(
        "--plot", default=None, help="plot (default results/distill.png; results/distill_quick.png with --quick)"
    )
    p.add_argument(
        "--work",
        default=None,
        help="where the distilled ladder is kept (resumable; default build/distill_bench, "
        "build/distill_bench_quick with --quick)",
    )
    add_overwrite_argument(p)
    p.add_argument("--stages", default=None, help="comma-separated iteration counts (resumed one after the other)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--extend",
        type=int,
        default=None,
        help="after a run: continue both distilled ladders in --work to this many iterations and add "
        "their distances to --out",
    )
    p.add_argument("--ladders", default="digits,data_free", help="with --extend: which distilled ladders to continue")
    a = p.parse_args(argv)
    try:
        stages = [int(s) for s in a.stages.split(",") if s.strip()] if a.stages else None
    except ValueError:
        p.error(f"--stages: expected comma-separated iteration counts, got {a.stages!r}")
    if stages is not None and (not stages or any(s < 1 for s in stages) or stages != sorted(set(stages))):
        p.error(f"--stages: expected increasing iteration counts >= 1, got {a.stages!r}")
    ladders = [x.strip() for x in a.ladders.split(",") if x.strip()]
    if not ladders or any(x not in ("digits", "data_free") for x in ladders):
        p.error(f"--ladders: expected some of digits, data_free, got {a.ladders!r}")
    default_out, default_plot = default_outputs("distill", a.quick)
    a.out, a.plot = a.out or default_out, a.plot or default_plot
    a.work = a.work or ("build/distill_bench_quick" if a.quick else "build/distill_bench")
    if a.extend is None:  # --extend adds stages to the results of the run it continues: it updates --out
        check_outputs(p, [a.out, a.plot], a.overwrite)
    else:
        try:
            with open(a.out) as f:
                last = json.load(f)["settings"]["stages"][-1]
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            p.error(f"--extend: continues a finished run, but {a.out} is not its results ({type(e).__name__}: {e})")
        if a.extend <= last:
            p.error(f"--extend: expected more than the run's last stage {last}, got {a.extend}")
    with single_thread():
        if a.extend is not None:
            extend(a.extend, out=a.out, plot=a.plot, work=a.work, ladders=ladders, command=command)
        else:
            run(quick=a.quick, out=a.out, plot=a.plot, work=a.work, seed=a.seed, stages=stages, command=command)


if __name__ == "__main__":
    main()

"""The image main job (``mlem demo``): EM with the top UNet against ML-EM on a shipped ladder (digits by
default; ``--ladder fashion``).

Every run samples the same ``n`` images from one seed: the same initial noise and, for the SDE
samplers (EM and ML-EM), the same Brownian path (the "em" sampler's virtual Brownian tree is
consistent across step counts). That makes two kinds of quality measurable at demo sizes:

* **path error** (the main number): RMS over samples of ``|x - x_ref|`` (L2 over the 256 pixels,
  data scale [-1, 1], unclipped) against a fine EM run of the top model on the same noise. This is
  what ML-EM is built to control (it is unbiased for the top model; the calibration plans for this
  error), and per-sample distances make its standard error small. The reference has its own step
  error, estimated as the path distance between EM at half its steps and the reference; errors
  near that floor are not resolved, and EM runs with many steps share part of the reference's
  error (they are understated more than ML-EM's random error is).
* **KID** against the ladder's reference set on the shipped classifier's features (digits: all 1797
  digits; Fashion-MNIST: the 10,000 test images; unbiased, in the units of ``mlem bench images``)
  and the classifier's mean confidence (max softmax): distributional checks, also for the ODE
  sampler DPM-Solver++ (whose noise-to-image map differs, so it has no path error). Standard
  errors are delete-one jackknife over the samples; differences between runs use the paired
  jackknife (the samples share their noise). At these sample sizes KID is noisy: the table says
  which differences exceed two paired standard errors.

Costs: top-level equivalents per sample (counted evaluations x FLOPs / top-level FLOPs),
evaluations per sample of each level, and single-thread CPU wall-clock seconds.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from itertools import pairwise

import torch

from .._io import atomic_write, write_json
from ..bench.common import DIGITS_LADDER, em_cost_at, single_thread

__all__ = ["DEFAULT_LADDER", "OUTPUT_FILES", "SETTINGS", "OutputsExist", "run_image_demo"]

DEFAULT_LADDER = DIGITS_LADDER
#: What the demo writes into its output folder.
OUTPUT_FILES = {"grids": "grids.png", "plot": "cost_quality.png", "json": "demo.json"}
#: The sweeps: EM-top step counts, ML-EM budgets (top-level equivalents per sample), DPM-Solver++ steps.
#: The ML-EM run shown in the grid is the middle budget (fixed before anything is measured).
SETTINGS = {
    "full": {
        "n": 48,
        "ref_steps": 256,
        "em_steps": (16, 32, 64, 128),
        "budgets": (8, 16, 32, 64),
        "dpm_steps": (10, 20),
        "schedule_n": 32,
        "schedule_steps": (4, 8, 16, 32, 64),
        "ode_ref_steps": 128,
    },
    "quick": {
        "n": 8,
        "ref_steps": 64,
        "em_steps": (8, 16, 32),
        "budgets": (4, 8),
        "dpm_steps": (5,),
        "schedule_n": 8,
        "schedule_steps": (2, 4, 8),
        "ode_ref_steps": 16,
    },
}
#: The sampler the honest comparison plans in (the schedule planner's measurements are taken inside it).
PLANNER_SAMPLER = "dpmpp_2m"
GRID_MAX = 48  # images per grid
#: How the demo names the data set of a ladder (``model_index.json``'s training data set).
_TITLES = {"digits": "Digits", "fashion-mnist": "Fashion-MNIST"}
Z_NOISE = 2.0  # differences within Z_NOISE paired standard errors are called noise


class OutputsExist(FileExistsError):
    """The output folder already holds demo outputs and overwriting was not asked for."""


# ----------------------------------------------------------------------------- statistics


def _sd(v: torch.Tensor) -> float:
    return float(v.double().std(unbiased=True)) if v.numel() > 1 else 0.0


def _path_stats(x: torch.Tensor, ref: torch.Tensor):
    """(RMS path error, its standard error, per-sample linearized contributions for paired differences)."""
    s = (x.double() - ref.double()).reshape(x.shape[0], -1).pow(2).sum(1)  # squared distance per sample
    err = float(s.mean().sqrt())
    if err == 0.0:
        return 0.0, 0.0, torch.zeros_like(s)
    u = s / (2 * err)  # delta method: d sqrt(m) = dm / (2 sqrt(m))
    return err, _sd(u) / math.sqrt(len(s)), u


def _paired_se(u: torch.Tensor, v: torch.Tensor) -> float:
    return _sd(u - v) / math.sqrt(len(u))


class _KID:
    """Unbiased KID (cubic polynomial kernel) against fixed reference features, with delete-one jackknife
    values so that paired differences between runs on the same samples get a standard error."""

    def __init__(self, ref_feats: torch.Tensor):
        fy = ref_feats.double()
        self.fy, self.d = fy, fy.shape[1]
        m = fy.shape[0]
        kyy = (fy @ fy.T / self.d + 1) ** 3
        self.kyy_term = float((kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)))

    def __call__(self, feats: torch.Tensor):
        """(KID, jackknife leave-one-out values (n,))."""
        fx = feats.double()
        n = fx.shape[0]
        kxx = (fx @ fx.T / self.d + 1) ** 3
        kxy = (fx @ self.fy.T / self.d + 1) ** 3
        rows = kxx.sum(1) - kxx.diagonal()  # sum over j != i
        s_xx = rows.sum()
        a = kxy.mean(1)
        kid = float(s_xx / (n * (n - 1)) + self.kyy_term - 2 * a.mean())
        loo = (s_xx - 2 * rows) / ((n - 1) * (n - 2)) + self.kyy_term - 2 * (a.sum() - a) / (n - 1)
        return kid, loo


def _jackknife_se(loo: torch.Tensor) -> float:
    n = loo.numel()
    return math.sqrt((n - 1) / n * float(((loo - loo.mean()) ** 2).sum()))


# ----------------------------------------------------------------------------- the job


def _check_outputs(out_dir: str, overwrite: bool) -> dict[str, str]:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputsExist(f"out_dir: {out_dir} exists and is not a folder")
    paths = {k: os.path.join(out_dir, v) for k, v in OUTPUT_FILES.items()}
    existing = [p for p in paths.values() if os.path.exists(p)]
    if existing and not overwrite:
        raise OutputsExist(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: "
            "pass overwrite=True to replace them, or choose another out_dir"
        )
    return paths


def run_image_demo(
    out_dir: str = "mlem-demo",
    *,
    n: int | None = None,
    seed: int = 0,
    quick: bool = False,
    overwrite: bool = False,
    ladder: str = DEFAULT_LADDER,
    progress: bool = True,
    command: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    """Sample the sweeps of :data:`SETTINGS` on ``ladder`` (a shipped ladder's name or a folder), print the cost table, and write
    ``grids.png`` (EM-top and ML-EM at about equal path error, side by side), ``cost_quality.png``
    and ``demo.json`` into ``out_dir`` (atomically; existing outputs are refused unless ``overwrite``).
    Returns what ``demo.json`` holds."""
    cfg = dict(SETTINGS["quick" if quick else "full"])
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 4:
            raise ValueError(f"n: expected an int >= 4 (samples per run; the jackknife needs a few), got {n!r}")
        cfg["n"] = n
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {seed!r}")
    paths = _check_outputs(os.fspath(out_dir), overwrite)  # before any sampling

    from ..images.ladder import ladder_dataset, resolve_ladder
    from ..images.metrics import quality_reference
    from ..images.pipeline import MultilevelPipeline

    t_start = time.perf_counter()
    ladder = resolve_ladder(ladder)
    pipe = MultilevelPipeline.from_pretrained(ladder)
    if pipe.calibration is None:
        raise ValueError(f"ladder {ladder}: no calibration.json, which ML-EM's budget plans need")
    quality = quality_reference(ladder_dataset(pipe.ladder) or "digits", pipe.ladder.sample_size)
    clf, ref_data = quality.classifier, quality.reference
    title = _TITLES.get(quality.dataset, quality.dataset)
    with single_thread():
        with torch.no_grad():
            kid = _KID(quality.features(ref_data))
        result = _run(pipe, clf, kid, cfg, seed, progress, echo, title)
    result["dataset"], result["title"] = quality.dataset, title
    cal = pipe.calibration
    result.update(
        {
            "command": command,
            "ladder": os.path.abspath(ladder),
            "widths": pipe.ladder.widths,
            "flops": pipe.ladder.costs,
            "gamma": cal.gamma,
            "n": cfg["n"],
            "seed": seed,
            "quick": quick,
            "settings": {k: v for k, v in cfg.items() if k != "n"},
            "machine": f"{platform.processor() or platform.machine()}, 1 torch thread",
            "metrics": {
                "path_error": (
                    f"RMS over samples of the L2 distance ({math.prod(pipe.ladder.shape)} pixels, data scale "
                    "[-1, 1], unclipped) to EM with "
                    f"the top model at {cfg['ref_steps']} steps on the same initial noise and Brownian path; "
                    "se by the delta method over samples; paired se for differences"
                ),
                "kid": (
                    "unbiased KID (unscaled, as in mlem bench images), cubic polynomial kernel on the features of "
                    f"{quality.extractor}, against {quality.reference_name}; se: delete-one jackknife; kid_diff: "
                    "minus the reference run's "
                    "KID, with the paired jackknife se (same noise)"
                ),
                "confidence": "mean max-softmax probability of the classifier; se over samples; paired se for diffs",
                "noise_rule": f"a difference is called noise when it is within {Z_NOISE:g} paired standard errors",
            },
        }
    )
    _write_outputs(result, paths, pipe)
    result["total_seconds"] = time.perf_counter() - t_start
    result["files"] = paths
    write_json(paths["json"], result)
    echo(f"wrote {paths['grids']}, {paths['plot']} and {paths['json']} ({result['total_seconds']:.0f} s in all)")
    return result


def _run(pipe, clf, kid: _KID, cfg: dict, seed: int, progress: bool, echo: Callable, title: str = "Digits") -> dict:
    from .._progress import progress_bar

    n = cfg["n"]
    runs: list[dict] = []
    samples: dict[str, torch.Tensor] = {}

    def run(label: str, method: str, **knob) -> dict:
        with progress_bar(desc=f"{label:>22}", unit="step", leave=False, disable=not progress) as bar:
            out = pipe(n, method=method, generator=torch.Generator().manual_seed(seed), progress=bar, **knob)
        rep = out.report
        row = {
            "label": label,
            "method": method,
            **knob,
            "steps": rep["steps"],
            "top_equivalents_per_sample": rep["top_equivalents_per_sample"],
            "evaluations_per_sample": {f"L{lv['level']}": lv["evaluations_per_sample"] for lv in rep["levels"]},
            "wall_seconds": rep["wall_seconds"],
            "wall_seconds_per_sample": rep["wall_seconds_per_sample"],
        }
        if method == "mlem":
            plan = pipe.sampling_plan(knob["budget"])  # the plan the run followed
            row["plan"] = {
                "levels": [lv + 1 for lv in plan.levels],
                "steps": plan.steps,
                "mu": plan.mu,
                "predicted_top_equivalents": plan.top_equivalents,
                "predicted_path_error": plan.error,
                "em_steps_for_that_error": plan.em_steps,
                "predicted_speedup": plan.em_cost / plan.cost,  # against EM with the top level
                "message": plan.message,
            }
            # The correction levels fire at random (Bernoulli per sample and step): Poisson-like count noise.
            var = sum(
                lv["evaluations_per_sample"] * n * (lv["flops"] / pipe.ladder.costs[-1]) ** 2
                for lv in rep["levels"][1:]
            )
            row["top_equivalents_se"] = math.sqrt(var) / n
        if method == "auto":
            a = rep["auto"]
            row["auto"] = {
                k: a[k]
                for k in ("schedule", "sampler", "kind", "steps", "predicted_error", "predicted_top_equivalents")
            }
        samples[label] = out.x
        with torch.no_grad():
            x = out.x.clamp(-1, 1)
            feats = clf.features(x)
            conf = clf.head(feats).softmax(1).max(1).values.double()
        k, row["_kid_loo"] = kid(feats)
        row["_conf"], row["kid"] = conf, k
        row["kid_se"] = _jackknife_se(row["_kid_loo"])
        row["confidence"], row["confidence_se"] = float(conf.mean()), _sd(conf) / math.sqrt(n)
        runs.append(row)
        echo(f"  {label:>22}: {row['top_equivalents_per_sample']:7.1f} top-eq/sample, {row['wall_seconds']:6.1f} s")
        return row

    echo(
        f"{title} ladder {pipe.ladder.names} ({', '.join(f'{c / 1e6:.1f}' for c in pipe.ladder.costs)} MFLOPs per "
        f"sample); {n} samples per run, seed {seed}; all runs share the initial noise (and the SDE runs the Brownian path)"
    )
    ref = run(f"EM top {cfg['ref_steps']} (reference)", "em", steps=cfg["ref_steps"])
    ref["role"] = "reference"
    for s in cfg["em_steps"]:
        run(f"EM top {s}", "em", steps=s)
    for b in cfg["budgets"]:
        run(f"ML-EM budget {b:g}", "mlem", budget=b)
    for s in cfg["dpm_steps"]:
        run(f"DPM-Solver++ {s}", "dpmpp_2m", steps=s)
    honest_rows = _planner_runs(pipe, run, runs, cfg, seed, echo)

    x_ref = samples[ref["label"]]
    path_u = {}

    def score_path(row):
        if row["method"] in ("em", "mlem"):
            row["path_error"], row["path_error_se"], path_u[row["label"]] = _path_stats(samples[row["label"]], x_ref)
        else:
            row["path_error"] = row["path_error_se"] = None  # an ODE sampler: another noise-to-image map

    for row in runs:
        score_path(row)
    em_rows = [r for r in runs if r["method"] == "em" and r is not ref]
    em_curve = [(r["top_equivalents_per_sample"], r["path_error"]) for r in em_rows]
    half = [r for r in em_rows if 2 * r["steps"] == cfg["ref_steps"]]
    ref_floor = half[0]["path_error"] if half else None

    # The grid: ML-EM at the middle budget, EM-top at the step count that reaches the same path error.
    ml_show = [r for r in runs if r["method"] == "mlem"][len(cfg["budgets"]) // 2]
    eq_cost = em_cost_at(em_curve, ml_show["path_error"])
    if eq_cost is None:
        em_show = min(em_rows, key=lambda r: abs(math.log(r["path_error"] / ml_show["path_error"])))
        match_note = "ML-EM's error is outside the EM sweep: EM-top shown at the closest error in the sweep"
    else:
        steps_eq = max(1, round(eq_cost))
        same = [r for r in runs if r["method"] == "em" and r["steps"] == steps_eq]
        em_show = same[0] if same else run(f"EM top {steps_eq} (matched)", "em", steps=steps_eq)
        score_path(em_show)
        match_note = (
            f"EM-top steps interpolated (log-log) from the EM sweep to ML-EM budget {ml_show['budget']:g}'s path error"
        )
    em_show["role"] = "grid_em"
    ml_show["role"] = "grid_mlem"

    for row in runs:  # differences against the reference run (paired: same samples)
        row["kid_diff"] = row["kid"] - ref["kid"]
        row["kid_diff_se"] = _jackknife_se(row["_kid_loo"] - ref["_kid_loo"])
        row["confidence_diff"] = row["confidence"] - ref["confidence"]
        row["confidence_diff_se"] = _sd(row["_conf"] - ref["_conf"]) / math.sqrt(n)

    comparisons = [_compare(r, em_curve, em_rows, path_u, n) for r in runs if r["method"] == "mlem"]
    honest = _honest(honest_rows, samples, pipe)
    grid = {
        "em": _grid_entry(em_show),
        "mlem": _grid_entry(ml_show),
        "how_matched": match_note,
        "path_error_diff": ml_show["path_error"] - em_show["path_error"],
        "path_error_diff_se": _paired_se(path_u[ml_show["label"]], path_u[em_show["label"]]),
        "kid_diff": ml_show["kid"] - em_show["kid"],
        "kid_diff_se": _jackknife_se(ml_show["_kid_loo"] - em_show["_kid_loo"]),
    }
    grid["_images"] = {"em": samples[em_show["label"]], "mlem": samples[ml_show["label"]]}
    table = _table(runs, ref_floor)
    summary = _summary(comparisons, grid, ref, ref_floor, runs)
    honest_lines = _honest_lines(honest)
    for line in honest_lines + [""] + table + [""] + summary:
        echo(line)
    for row in runs:
        for k in [k for k in row if k.startswith("_")]:
            del row[k]
    return {
        "reference": {
            "method": "em",
            "steps": cfg["ref_steps"],
            "own_error_estimate": ref_floor,
            "own_error_how": f"path distance of EM at {cfg['ref_steps'] // 2} steps to the reference",
        },
        "runs": runs,
        "comparisons": comparisons,
        "planner": honest,
        "planner_lines": honest_lines,
        "grid": grid,
        "table_lines": table,
        "summary_lines": summary,
    }


def _planner_runs(pipe, run, runs: list[dict], cfg: dict, seed: int, echo: Callable) -> dict:
    """The honest comparison's runs: the schedule planner's measurements inside DPM-Solver++, its reference, and at
    each budget the planner's pick, DPM-Solver++ and EM with the top model alone at floor(budget) steps (runs of
    the sweeps reused). Returns ``{"reference": row, "budgets": [(budget, pick, dpm, em)], "calibration": {...}}``."""
    from ..calibration import budget_steps

    t0 = time.perf_counter()
    # The comparison is inside DPM-Solver++ only: drop schedule measurements a ladder folder may carry for other
    # samplers (in memory; the demo never writes the calibration), so that method="auto" picks inside DPM-Solver++.
    pipe.calibration.schedules.clear()
    measured = pipe.calibrate_schedules(
        [PLANNER_SAMPLER],
        n=cfg["schedule_n"],
        steps=cfg["schedule_steps"],
        reference_steps=cfg["ode_ref_steps"],
        seed=seed,
    )[PLANNER_SAMPLER]
    seconds = time.perf_counter() - t0
    echo(
        f"  schedule planner: measured inside DPM-Solver++ in {seconds:.0f} s ({measured.pipeline.runs} runs of "
        f"{cfg['schedule_n']} images)"
    )
    by_label = {r["label"]: r for r in runs}

    def reuse(label, method, steps):
        return by_label.get(label) or run(label, method, steps=steps)

    reference = run(f"DPM-Solver++ {cfg['ode_ref_steps']} (ODE reference)", "dpmpp_2m", steps=cfg["ode_ref_steps"])
    out = []
    for b in cfg["budgets"]:
        s = budget_steps(b)
        pick = run(f"planner's pick, budget {b:g}", "auto", budget=b)
        out.append((b, pick, reuse(f"DPM-Solver++ {s}", "dpmpp_2m", s), reuse(f"EM top {s}", "em", s)))
    return {
        "reference": reference,
        "budgets": out,
        "calibration": {
            "sampler": PLANNER_SAMPLER,
            "images": cfg["schedule_n"],
            "steps": list(cfg["schedule_steps"]),
            "reference_steps": cfg["ode_ref_steps"],
            "pipeline_runs": measured.pipeline.runs,
            "seconds": seconds,
        },
    }


def _honest(h: dict, samples: dict, pipe) -> dict:
    """At each budget: the planner's pick, DPM-Solver++ and EM (top model alone), in cost (top-level equivalents,
    seconds), in ODE path error (pick and DPM-Solver++ against DPM-Solver++ with many steps on the same noise,
    paired) and in KID (all three, paired jackknife)."""
    x_ref = samples[h["reference"]["label"]]
    scale = math.sqrt(math.prod(pipe.ladder.shape))  # the planner's RMS per element -> L2 per sample
    rows = []

    def entry(r, ode: bool) -> dict:
        e = {
            "label": r["label"],
            "steps": r["steps"],
            "top_equivalents_per_sample": r["top_equivalents_per_sample"],
            "wall_seconds_per_sample": r["wall_seconds_per_sample"],
            "kid": r["kid"],
            "kid_se": r["kid_se"],
        }
        if ode:
            e["ode_path_error"], e["ode_path_error_se"], _ = _path_stats(samples[r["label"]], x_ref)
        return e

    for b, pick, dpm, em in h["budgets"]:
        _, _, u_pick = _path_stats(samples[pick["label"]], x_ref)
        _, _, u_dpm = _path_stats(samples[dpm["label"]], x_ref)
        p = entry(pick, True)
        p.update(pick["auto"])
        p["predicted_ode_path_error"] = pick["auto"]["predicted_error"] * scale
        d = entry(dpm, True)
        rows.append(
            {
                "budget": b,
                "pick": p,
                "dpm_top": d,
                "em_top": entry(em, False),
                "pick_minus_dpm_ode_path_error": p["ode_path_error"] - d["ode_path_error"],
                "pick_minus_dpm_ode_path_error_se": _paired_se(u_pick, u_dpm),
                "pick_minus_dpm_kid": pick["kid"] - dpm["kid"],
                "pick_minus_dpm_kid_se": _jackknife_se(pick["_kid_loo"] - dpm["_kid_loo"]),
                "pick_minus_em_kid": pick["kid"] - em["kid"],
                "pick_minus_em_kid_se": _jackknife_se(pick["_kid_loo"] - em["_kid_loo"]),
            }
        )
    return {
        "what": (
            "at each budget, the schedule planner's pick inside DPM-Solver++ (MultilevelPipeline.choose: the top model "
            "alone, the best switch, ML-EM, the best hybrid) next to the top model alone with DPM-Solver++ and with EM "
            "at floor(budget) steps"
        ),
        "ode_reference": h["reference"]["label"],
        "ode_path_error": (
            "RMS over samples of the L2 distance to the ODE reference on the same noise; predicted: the planner's "
            "RMS per element times sqrt(pixels)"
        ),
        "calibration": h["calibration"],
        "budgets": rows,
    }


def _honest_lines(h: dict) -> list[str]:
    """The honest comparison, printed first."""
    lines = [
        "The honest comparison: at each budget (top-level equivalents per sample), the schedule planner's pick "
        "inside DPM-Solver++ next to the top model alone with DPM-Solver++ and with EM at floor(budget) steps.",
        f"ODE path error: L2 distance to {h['ode_reference']} on the same noise (± se); KID ± jackknife se; "
        "differences paired (same noise), ± paired se.",
    ]
    tops = [r["budget"] for r in h["budgets"] if r["pick"]["kind"] == "top"]
    if len(tops) == len(h["budgets"]):
        lines.append(
            "  Verdict: at every budget the planner picks the top model alone with DPM-Solver++: on this ladder no "
            "schedule of cheaper models is predicted to beat it (ML-EM's gains below are against EM)."
        )
    elif tops:
        lines.append(f"  The planner picks the top model alone at budget(s) {', '.join(f'{b:g}' for b in tops)}.")
    for r in h["budgets"]:
        p, d, e = r["pick"], r["dpm_top"], r["em_top"]
        pe, pse = r["pick_minus_dpm_ode_path_error"], r["pick_minus_dpm_ode_path_error_se"]
        verdict = "within noise" if abs(pe) <= Z_NOISE * pse else ("pick better" if pe < 0 else "DPM-Solver++ better")
        lines.append(
            f"  budget {r['budget']:g}: pick = {p['schedule']} ({p['top_equivalents_per_sample']:.1f} top-eq, "
            f"{p['wall_seconds_per_sample'] * 1e3:.1f} ms/sample): ODE path error {p['ode_path_error']:.3f} "
            f"(predicted {p['predicted_ode_path_error']:.3f}), KID {p['kid']:.1f} ± {p['kid_se']:.1f}; "
            f"DPM-Solver++ {d['steps']} steps ({d['top_equivalents_per_sample']:.1f} top-eq, "
            f"{d['wall_seconds_per_sample'] * 1e3:.1f} ms/sample): {d['ode_path_error']:.3f}, KID {d['kid']:.1f} "
            f"± {d['kid_se']:.1f}; EM {e['steps']} steps: KID {e['kid']:.1f} ± {e['kid_se']:.1f}. "
            f"Pick minus DPM-Solver++: path {pe:+.3f} ± {pse:.3f} ({verdict}), KID {r['pick_minus_dpm_kid']:+.1f} ± "
            f"{r['pick_minus_dpm_kid_se']:.1f}; pick minus EM: KID {r['pick_minus_em_kid']:+.1f} ± "
            f"{r['pick_minus_em_kid_se']:.1f}."
        )
    return lines


def _grid_entry(r: dict) -> dict:
    return {
        k: r.get(k)
        for k in (
            "label",
            "method",
            "steps",
            "budget",
            "top_equivalents_per_sample",
            "path_error",
            "path_error_se",
            "wall_seconds_per_sample",
        )
    }


def _compare(ml: dict, em_curve, em_rows, path_u, n) -> dict:
    """ML-EM against EM-top at the same path error (cost ratio) and at the same cost (error ratio)."""
    c_ml, e_ml = ml["top_equivalents_per_sample"], ml["path_error"]
    em_cost = em_cost_at(em_curve, e_ml)
    cheapest = min(em_curve)  # (cost, error) of the sweep's cheapest EM run
    above_sweep = e_ml > max(e for _, e in em_curve)
    if above_sweep:  # every EM run is more accurate: EM needs less than its cheapest run, by an unknown amount
        em_cost = None
    # EM-top's error at ML-EM's cost: log-log interpolation on the (cost, error) curve.
    pts = sorted(em_curve)
    em_err = None
    for (c0, e0), (c1, e1) in pairwise(pts):
        if c0 <= c_ml <= c1:
            em_err = math.exp(math.log(e0) + (math.log(e1) - math.log(e0)) * math.log(c_ml / c0) / math.log(c1 / c0))
    nearest = min(em_rows, key=lambda r: abs(math.log(r["top_equivalents_per_sample"] / c_ml)))
    ms_per_top = sum(r["wall_seconds_per_sample"] for r in em_rows) / sum(
        r["top_equivalents_per_sample"] for r in em_rows
    )
    out = {
        "label": ml["label"],
        "budget": ml["budget"],
        "top_equivalents_per_sample": c_ml,
        "top_equivalents_se": ml["top_equivalents_se"],
        "predicted_top_equivalents": ml["plan"]["predicted_top_equivalents"],
        "path_error": e_ml,
        "predicted_path_error": ml["plan"]["predicted_path_error"],
        "predicted_speedup": ml["plan"]["predicted_speedup"],
        "em_top_equivalents_at_same_error": em_cost,
        "error_above_em_sweep": above_sweep,
        "em_cheapest": {"top_equivalents_per_sample": cheapest[0], "path_error": cheapest[1]},
        "speedup_top_equivalents": None if em_cost is None else em_cost / c_ml,
        "speedup_wall": None if em_cost is None else em_cost * ms_per_top / ml["wall_seconds_per_sample"],
        "em_path_error_at_same_cost": em_err,
        "nearest_em": nearest["label"],
        "path_error_diff_vs_nearest_em": e_ml - nearest["path_error"],
        "path_error_diff_se_vs_nearest_em": _paired_se(path_u[ml["label"]], path_u[nearest["label"]]),
    }
    return out


def _fmt(v, spec, none="–"):
    return none if v is None else format(v, spec)


def _table(runs: list[dict], ref_floor) -> list[str]:
    cols = [
        ("method", "<", 31),
        ("steps", ">", 5),
        ("top-eq/sample", ">", 18),
        ("evals/sample by level", "<", 21),
        ("wall s", ">", 6),
        ("ms/sample", ">", 9),
        ("path error ± se", ">", 16),
        ("KID (minus ref ± paired se)", ">", 28),
        ("confidence ± se", ">", 15),
    ]

    def line(values):
        return "  ".join(f"{v:{a}{w}}" for v, (_, a, w) in zip(values, cols))

    lines = [line([c[0] for c in cols])]
    lines.append("-" * len(lines[0]))
    for r in runs:
        te = f"{r['top_equivalents_per_sample']:.1f}"
        if r["method"] == "mlem":
            te += f" (plan {r['plan']['predicted_top_equivalents']:.1f})"
        ev = " ".join(f"{k}:{v:.4g}" for k, v in r["evaluations_per_sample"].items())
        if r.get("role") == "reference":
            pe = "0 (reference)"
            kd = f"{r['kid']:.1f} ± {r['kid_se']:.1f} (ref)"
        else:
            pe = "– (ODE)" if r["path_error"] is None else f"{r['path_error']:.3f} ± {r['path_error_se']:.3f}"
            kd = f"{r['kid']:.1f} ({r['kid_diff']:+.1f} ± {r['kid_diff_se']:.1f})"
        lines.append(
            line(
                [
                    r["label"],
                    r["steps"],
                    te,
                    ev,
                    f"{r['wall_seconds']:.1f}",
                    f"{r['wall_seconds_per_sample'] * 1e3:.1f}",
                    pe,
                    kd,
                    f"{r['confidence']:.3f} ± {r['confidence_se']:.3f}",
                ]
            )
        )
    lines.append(
        "top-eq: top-level equivalents (evaluations x FLOPs / top FLOPs); L1..L4: evaluations per sample of "
        "each level; wall: sampling only, 1 CPU thread."
    )
    lines.append(
        "path error: RMS L2 distance to the reference on the same noise, ± se over samples"
        + (
            f"; the reference's own step error is about {ref_floor:.3f} (EM at half its steps), so errors "
            "near it are not resolved"
            if ref_floor is not None
            else ""
        )
    )
    lines.append(
        "KID (classifier features vs the reference set: see demo.json) ± jackknife se; in brackets: minus the reference's KID "
        "± paired se. confidence: the classifier's mean max-softmax ± se."
    )
    return lines


def _summary(comparisons, grid, ref, ref_floor, runs) -> list[str]:
    lines = []
    for c in comparisons:
        dev = c["top_equivalents_per_sample"] - c["predicted_top_equivalents"]
        s = (
            f"ML-EM budget {c['budget']:g}: {c['top_equivalents_per_sample']:.2f} ± {c['top_equivalents_se']:.2f} "
            f"top-eq/sample measured vs {c['predicted_top_equivalents']:.2f} planned ({dev:+.2f}); path error "
            f"{c['path_error']:.3f} (plan predicted {c['predicted_path_error']:.3f} against the exact top-model path). "
        )
        if c.get("error_above_em_sweep"):
            ch = c["em_cheapest"]
            s += (
                f"Every EM-top run of the sweep is more accurate (the cheapest, {ch['top_equivalents_per_sample']:.0f} "
                f"top-eq, reaches {ch['path_error']:.3f}): EM-top needs less than that for this error, so there is no "
                "equal-error saving to report."
            )
        elif c["speedup_top_equivalents"] is None:
            s += "Its error is outside the EM sweep's range: no equal-error comparison."
        else:
            s += (
                f"EM-top needs ~{c['em_top_equivalents_at_same_error']:.1f} top-eq for that error: ML-EM is "
                f"{c['speedup_top_equivalents']:.2f}x cheaper in top-level equivalents (plan predicted "
                f"{c['predicted_speedup']:.2f}x) and {c['speedup_wall']:.2f}x in wall-clock time."
            )
        d, se = c["path_error_diff_vs_nearest_em"], c["path_error_diff_se_vs_nearest_em"]
        verdict = "within noise" if abs(d) <= Z_NOISE * se else ("ML-EM better" if d < 0 else "EM better")
        s += f" Against {c['nearest_em']} (nearest cost): error difference {d:+.3f} ± {se:.3f} ({verdict})."
        if ref_floor is not None and c["path_error"] < 2 * ref_floor:
            s += f" Caution: this error is within 2x of the reference's own error ({ref_floor:.3f})."
        lines.append(s)
    g = grid
    lines.append(
        f"Grid: {g['em']['label']} ({g['em']['top_equivalents_per_sample']:.1f} top-eq, path error "
        f"{g['em']['path_error']:.3f}) vs {g['mlem']['label']} ({g['mlem']['top_equivalents_per_sample']:.1f} top-eq, "
        f"{g['mlem']['path_error']:.3f}): error difference {g['path_error_diff']:+.3f} ± {g['path_error_diff_se']:.3f}, "
        f"KID difference {g['kid_diff']:+.1f} ± {g['kid_diff_se']:.1f}."
    )
    beyond = [r["label"] for r in runs if r is not ref and abs(r["kid_diff"]) > Z_NOISE * r["kid_diff_se"]]
    lines.append(
        "KID: "
        + (
            "no run differs from the reference by more than 2 paired se: at this sample size KID "
            "cannot tell these samplers apart"
            if not beyond
            else f"beyond 2 paired se of the reference: {', '.join(beyond)}; the others are within noise"
        )
    )
    return lines


# ----------------------------------------------------------------------------- files


def _errorbars(ax, xs, ys, se, fmt: str, color: str, label: str) -> None:
    """One method's points with their standard errors on a cost-quality panel."""
    ax.errorbar(xs, ys, yerr=se, fmt=fmt, color=color, capsize=3, label=label)


def _write_outputs(result: dict, paths: dict[str, str], pipe) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..images.pipeline import image_grid, to_numpy_images

    grid = result["grid"]
    imgs = grid.pop("_images")
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.2))
    for ax, key in zip(axes, ("em", "mlem")):
        e = grid[key]
        im = image_grid(to_numpy_images(imgs[key][:GRID_MAX]), ncols=8, pad=1)
        ax.imshow(im, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if key == "em":
            title = f"EM top, {e['steps']} steps, {e['top_equivalents_per_sample']:.1f} top-level equiv."
        else:
            title = (
                f"ML-EM, budget {e['budget']:g} ({e['steps']} steps), "
                f"{e['top_equivalents_per_sample']:.1f} top-level equiv."
            )
        ax.set_title(
            f"{title}\npath error {e['path_error']:.3f} ± {e['path_error_se']:.3f}, "
            f"{e['wall_seconds_per_sample'] * 1e3:.0f} ms/sample",
            fontsize=11,
        )
    fig.suptitle(
        f"{result.get('title', 'Digits')} ladder, same seed ({result['n']} samples, same initial noise and Brownian path); "
        f"error difference ML-EM - EM: {grid['path_error_diff']:+.3f} ± {grid['path_error_diff_se']:.3f}",
        fontsize=11,
    )
    fig.tight_layout()
    atomic_write(paths["grids"], lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)

    runs = result["runs"]
    ref = next(r for r in runs if r.get("role") == "reference")
    fig, (a1, a3, a2) = plt.subplots(1, 3, figsize=(19, 5.4))
    styles = {
        "em": ("EM top", "o-", "C0"),
        "mlem": ("ML-EM (budget plans)", "s-", "C3"),
        "dpmpp_2m": ("DPM-Solver++ 2M (top)", "^-", "C2"),
        "auto": ("planner's pick (DPM-Solver++)", "D-", "C4"),
    }
    for method, (name, fmt, color) in styles.items():
        rs = sorted(
            (r for r in runs if r["method"] == method and r is not ref), key=lambda r: r["top_equivalents_per_sample"]
        )
        if not rs:
            continue
        c = [r["top_equivalents_per_sample"] for r in rs]
        if method in ("em", "mlem"):
            _errorbars(a1, c, [r["path_error"] for r in rs], [r["path_error_se"] for r in rs], fmt, color, name)
        _errorbars(a2, c, [r["kid_diff"] for r in rs], [r["kid_diff_se"] for r in rs], fmt, color, name)
    ml = [r for r in runs if r["method"] == "mlem"]
    a1.plot(
        [r["plan"]["predicted_top_equivalents"] for r in ml],
        [r["plan"]["predicted_path_error"] for r in ml],
        "s",
        mfc="none",
        color="C3",
        alpha=0.6,
        label="ML-EM plan's predicted error (vs exact path)",
    )
    floor = result["reference"]["own_error_estimate"]
    if floor is not None:
        a1.axhline(floor, color="gray", ls="--", lw=1)
        a1.text(
            min(r["top_equivalents_per_sample"] for r in ml),
            floor * 1.04,
            f"reference's own error ≈ {floor:.2f}",
            color="gray",
            fontsize=9,
        )
    a1.set_xscale("log")
    a1.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter

    a1.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    a1.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    a1.set_xlabel("cost: top-level equivalents per sample")
    a1.set_ylabel(f"path error vs EM top {ref['steps']} steps (RMS L2), ± se")
    a1.set_title("Error against the top model's sample on the same noise")
    a1.legend(fontsize=9)
    # the honest comparison: the planner's pick against DPM-Solver++ with the top model alone, on the ODE's own path
    h = result["planner"]
    for key, (name, fmt, color) in (("dpm_top", styles["dpmpp_2m"]), ("pick", styles["auto"])):
        es = [r[key] for r in h["budgets"]]
        _errorbars(
            a3,
            [e["top_equivalents_per_sample"] for e in es],
            [e["ode_path_error"] for e in es],
            [e["ode_path_error_se"] for e in es],
            fmt,
            color,
            name,
        )
    a3.plot(
        [r["pick"]["predicted_top_equivalents"] for r in h["budgets"]],
        [r["pick"]["predicted_ode_path_error"] for r in h["budgets"]],
        "D",
        mfc="none",
        color="C4",
        alpha=0.6,
        label="the pick's predicted error",
    )
    a3.set_xscale("log")
    a3.set_yscale("log")
    a3.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    a3.set_xlabel("cost: top-level equivalents per sample")
    a3.set_ylabel(f"ODE path error vs {h['ode_reference']} (RMS L2), ± se")
    a3.set_title("The honest comparison: the planner's pick vs DPM-Solver++ alone")
    a3.legend(fontsize=9)
    a3.grid(alpha=0.3, which="both")
    a2.axhline(0, color="gray", lw=1)
    a2.errorbar(
        [ref["top_equivalents_per_sample"]], [0], fmt="o", color="k", label=f"reference (EM top {ref['steps']})"
    )
    a2.set_xscale("log")
    a2.set_xlabel("cost: top-level equivalents per sample")
    a2.set_ylabel("KID minus the reference's, ± paired jackknife se")
    a2.set_title(f"Distributional check (KID vs the reference set, n = {result['n']}): noisy")
    a2.legend(fontsize=9)
    for ax in (a1, a2):
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    atomic_write(paths["plot"], lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)

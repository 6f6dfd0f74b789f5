"""Cost against quality on the shipped digits UNet ladder (``mlem bench images``).

Runs (the defaults in :data:`SETTINGS`): the top UNet alone with EM (the reverse SDE), DDPM,
DDIM and DPM-Solver++ 2M at a few step counts, T-Stitch (the smallest level for the first 40%
of DDIM's steps, then the top), and ML-EM planned by the shipped calibration for a budget
(``pipe(method="mlem", budget=B, sampler=S)``) inside EM, DPM-Solver++ and DDPM. The calibration
cannot measure DDPM (its scheduler draws fresh noise for every step count), so ML-EM inside DDPM
is planned by the calibration's EM model; its rows say so (``plan_source``).

Every run draws sample i from the same per-sample generator (``sample_generators(seed, i)``):
the same initial noise in every run (samples are computed in batches, which does not change
them, up to float rounding). With per-sample generators EM draws its Brownian increments step by
step, so EM runs with different step counts do NOT share a Brownian path; the pathwise errors of
EM and ML-EM inside EM are therefore measured on a separate batch (below).

Quality, on the 64-d features of the shipped digit classifier against all 1797 scikit-learn
digits (the reference set, fixed):

* KID: unbiased squared MMD, cubic polynomial kernel (:func:`kid_unbiased`), unscaled;
* FD: Fréchet distance of the Gaussians fitted to the two feature sets (:func:`frechet_distance`);
* confidence intervals: percentile bootstrap over the generated samples (``boot`` resamples, one
  fixed seed); every run uses the SAME resampled indices, so the difference of two runs'
  replicates is a paired bootstrap of their difference (they share their noise). A difference is
  *resolved* when its paired interval excludes 0 (per pair, not corrected for multiple comparisons);
* pathwise error: RMS over ``pathwise_n`` samples of the Euclidean distance (data scale [-1, 1],
  1x16x16 pixels) to the run's own sampler's converged output from the same noise. EM and ML-EM
  inside EM: a separate batch of ``pathwise_n`` samples from one generator (``Generator(seed)``), whose
  virtual Brownian tree every EM run shares whatever its step count, against EM-top with
  ``em_ref_steps`` steps (:func:`em_pathwise`); the ODE samplers: the first ``pathwise_n`` samples of
  the run itself against DPM-Solver++ with ``ode_ref_steps`` steps (DDIM, DPM-Solver++, T-Stitch, ML-EM inside DPM-Solver++: for
  T-Stitch the distance includes the small model's bias). None for DDPM (no converged pathwise solution).

Costs: counted top-level equivalents per sample (evaluations x FLOPs / top FLOPs, from the
pipeline's report) and single-thread CPU wall-clock seconds per sample (sampling only).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..calibration.samplers import squared_distances
from ..diffusion import registry
from ..diffusion.registry import SAMPLERS
from ..engine.random import sample_generators
from ..images.ladder import ladder_dataset, schedule_to_dict
from ..images.metrics import (
    bootstrap_counts,
    frechet_bootstrap,
    frechet_distance,
    kid_bootstrap,
    kid_unbiased,
    percentile_ci,
    quality_reference,
)
from ..images.pipeline import MultilevelPipeline
from .cache import RunCache, check_shard, file_sha256, jsonable, shard_units
from .common import device_name, pareto_front, single_thread, write_json

__all__ = [
    "SETTINGS",
    "N_MIN",
    "run_images_bench",
    "estimate_seconds",
    "em_pathwise",
    "repair_em_pathwise",
    "markdown_tables",
]

#: Runs: (method, knobs). T-Stitch uses the pipeline's default: level 1 for 40% of DDIM's steps.
FULL_RUNS = (
    ("em", {"steps": 10}),
    ("em", {"steps": 25}),
    ("em", {"steps": 50}),
    ("ddpm", {"steps": 10}),
    ("ddpm", {"steps": 25}),
    ("ddpm", {"steps": 50}),
    ("ddim", {"steps": 10}),
    ("ddim", {"steps": 25}),
    ("dpmpp_2m", {"steps": 5}),
    ("dpmpp_2m", {"steps": 10}),
    ("dpmpp_2m", {"steps": 25}),
    ("stitch", {"steps": 25}),
    ("mlem", {"sampler": "em", "budget": 10}),
    ("mlem", {"sampler": "em", "budget": 25}),
    ("mlem", {"sampler": "em", "budget": 50}),
    ("mlem", {"sampler": "dpmpp_2m", "budget": 10}),
    ("mlem", {"sampler": "dpmpp_2m", "budget": 25}),
    ("mlem", {"sampler": "ddpm", "budget": 25}),
)
#: Fashion-MNIST runs (the issue's list): the top model alone with every sampler, EM at 50 and 250 steps and
#: DPM-Solver++ at 10 and 25 (the resolution checks), T-Stitch with its published default (the smallest level
#: for 40% of DDIM's steps) and with each level inside DPM-Solver++, ML-EM inside every sampler the calibration
#: measures, and the planner's choice at each budget; ML-EM inside DDPM and DPM++ SDE too (planned by EM's model: their
#: noise cannot be shared across step counts, so the calibration has no fit of their own), because the stochastic
#: samplers reach the best Frechet distance on this ladder.
FASHION_RUNS = (
    ("em", {"steps": 50}),
    ("em", {"steps": 250}),
    ("ddpm", {"steps": 50}),
    ("ddim", {"steps": 10}),
    ("ddim", {"steps": 25}),
    ("dpmpp_2m", {"steps": 5}),
    ("dpmpp_2m", {"steps": 10}),
    ("dpmpp_2m", {"steps": 25}),
    ("dpmpp_sde", {"steps": 10}),
    ("dpmpp_sde", {"steps": 25}),
    ("unipc", {"steps": 5}),
    ("unipc", {"steps": 10}),
    ("unipc", {"steps": 25}),
    ("stitch", {"steps": 25}),
    ("stitch", {"steps": 10, "sampler": "dpmpp_2m", "fractions": [0.4, 0.0, 0.0]}),
    ("stitch", {"steps": 10, "sampler": "dpmpp_2m", "fractions": [0.0, 0.4, 0.0]}),
    ("stitch", {"steps": 10, "sampler": "dpmpp_2m", "fractions": [0.0, 0.0, 0.4]}),
    ("mlem", {"sampler": "em", "budget": 25}),
    ("mlem", {"sampler": "em", "budget": 50}),
    ("mlem", {"sampler": "dpmpp_2m", "budget": 5}),
    ("mlem", {"sampler": "dpmpp_2m", "budget": 10}),
    ("mlem", {"sampler": "unipc", "budget": 10}),
    ("mlem", {"sampler": "ddim", "budget": 10}),
    ("mlem", {"sampler": "dpmpp_sde", "budget": 10}),
    ("mlem", {"sampler": "dpmpp_sde", "budget": 25}),
    ("mlem", {"sampler": "ddpm", "budget": 50}),
    ("auto", {"budget": 5}),
    ("auto", {"budget": 10}),
    ("auto", {"budget": 25}),
)
SETTINGS = {
    "fashion": {
        "n": 2000,
        "runs": FASHION_RUNS,
        "boot": 1000,
        "pathwise_n": 128,
        "em_ref_steps": 500,
        "ode_ref_steps": 200,
        "batch": 250,
    },
    "full": {
        "n": 2000,
        "runs": FULL_RUNS,
        "boot": 1000,
        "pathwise_n": 192,
        "em_ref_steps": 500,
        "ode_ref_steps": 200,
        "batch": 250,
    },
    "quick": {
        "n": 128,
        "runs": (("em", {"steps": 10}), ("dpmpp_2m", {"steps": 5}), ("mlem", {"sampler": "em", "budget": 10})),
        "boot": 100,
        "pathwise_n": 32,
        "em_ref_steps": 40,
        "ode_ref_steps": 20,
        "batch": 128,
    },
}
#: Fewest samples per run (--n): the bootstrap and the covariance fit need a few dozen.
N_MIN = 64
LEVEL = 0.95  # bootstrap interval level
#: Single-thread seconds per sample per top-level equivalent of the digits ladder's top UNet on this project's CPU
#: (2.2-2.5 ms measured on the shared 2-core machine, 2026-12-02), for the up-front estimate only; another
#: ladder's is scaled by its top level's FLOPs (:func:`seconds_per_top_equivalent`).
SECONDS_PER_TOP_EQ = 2.5e-3
#: FLOPs per sample of the digits ladder's top UNet (width 32 at 16x16), the unit of SECONDS_PER_TOP_EQ.
_DIGITS_TOP_FLOPS = 121.9e6
#: ML-EM's runs took ~1.6x the time of their counted cost there (small levels cost more than their FLOP share).
MLEM_WALL_FACTOR = 1.6
#: An ML-EM run is compared with the single-model runs costing at most this much more (relative).
EQUAL_COST_SLACK = 0.05
ODE_SAMPLERS = tuple(name for name in SAMPLERS if registry.family(name) == "ode")


#: Cache keys of the two reference units (the runs' keys are their labels).
ODE_REF = "reference - DPM++ ODE"
EM_REF = "reference - EM-top, one generator"
EM_PATHWISE = "pathwise - "


def _sampler(method: str, knob: Dict) -> Optional[str]:
    if method in ("mlem", "stitch"):
        return knob.get("sampler") or registry.METHOD_SPECS[method].default_sampler
    if method == "auto":
        return None  # chosen by the planner: known after the run (row["sampler"])
    return method


def _family(method: str, knob: Dict) -> str:
    return f"mlem:{_sampler(method, knob)}" if method == "mlem" else method


def _stitch_levels(knob: Dict) -> str:
    fr = knob.get("fractions")
    if fr is None:
        return ""
    used = [f"level {i + 1} {f:.0%}" for i, f in enumerate(fr) if f > 0]
    return f" ({', '.join(used) or 'top only'})"


def _label(method: str, knob: Dict) -> str:
    if method == "mlem":
        return f"ML-EM in {_sampler(method, knob)}, budget {knob['budget']:g}"
    if method == "auto":
        return f"planner's choice, budget {knob['budget']:g}"
    if method == "stitch":
        s = knob.get("sampler")
        inner = "" if s is None or s == registry.METHOD_SPECS["stitch"].default_sampler else f" {registry.label(s)}"
        return f"{registry.label(method)}{inner} {knob['steps']}{_stitch_levels(knob)}"
    return f"{registry.label(method)} {knob['steps']}"


def _pathwise_kind(method: str, knob: Dict) -> Optional[str]:
    s = _sampler(method, knob)
    if s == "em":
        return "em"
    if s in ODE_SAMPLERS:
        return "ode"
    return None


def _auto_pathwise_kind(report: Dict) -> Optional[str]:
    """The planner's choice is scored pathwise when it chose a deterministic sampler (against the ODE reference)."""
    choice = report.get("auto") or {}
    s = choice.get("sampler") or choice.get("method")
    return "ode" if s in ODE_SAMPLERS else None


def _auto_twin(pipe, knob: Dict) -> Optional[Tuple[str, Dict]]:
    """The one-model run ``(sampler, {"steps": N})`` that ``method="auto"`` at this budget runs, or None when the
    planner chooses ML-EM (whose draws make it a run of its own)."""
    choice = pipe.choose(knob["budget"])
    return None if choice["method"] == "mlem" else (choice["method"], {"steps": int(choice["steps"])})


def _check_runs(runs) -> List[Tuple[str, Dict]]:
    out = []
    for item in runs:
        try:
            method, knob = item
            knob = dict(knob)
        except (TypeError, ValueError):
            raise ValueError(f"runs: expected (method, knobs) pairs, got {item!r}") from None
        if method in ("mlem", "auto"):
            if "budget" not in knob:
                raise ValueError(f"runs: an {method!r} run needs a budget, got {knob!r}")
        elif "steps" not in knob:
            raise ValueError(f"runs: a {method!r} run needs steps, got {knob!r}")
        out.append((method, knob))
    if len(out) < 2:
        raise ValueError(f"runs: expected at least 2 runs to compare, got {len(out)}")
    if len({_label(m, k) for m, k in out}) != len(out):
        raise ValueError("runs: a run is listed twice")
    return out


def _plan(pipe, knob: Dict):
    """The plan pipe(method='mlem', budget=..., sampler=...) follows, and the warning it gives (or None)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = pipe.sampling_plan(knob["budget"], knob.get("steps"), knob.get("sampler") or "em")
    return plan, (str(caught[0].message) if caught else None)


def seconds_per_top_equivalent(pipe) -> float:
    """Estimated single-thread seconds per sample of one top-level evaluation: :data:`SECONDS_PER_TOP_EQ` scaled by
    the top level's FLOPs (the Fashion-MNIST top, 274 MFLOPs, measured 4.5-5.5 ms at batch 64)."""
    return SECONDS_PER_TOP_EQ * pipe.ladder.costs[-1] / _DIGITS_TOP_FLOPS


def estimate_seconds(pipe, runs, n: int, pathwise_n: int, em_ref_steps: int, ode_ref_steps: int) -> Dict:
    """Up-front wall-clock estimate from the counted costs: per run its predicted top-level equivalents
    per sample (steps; T-Stitch's level shares; ML-EM's plan) x n x :func:`seconds_per_top_equivalent` (x
    :data:`MLEM_WALL_FACTOR` for ML-EM), plus the pathwise references on ``pathwise_n`` samples."""
    L = pipe.ladder
    unit = seconds_per_top_equivalent(pipe)
    per_run, total = [], 0.0
    for method, knob in runs:
        if method == "mlem":
            cost = _plan(pipe, knob)[0].top_equivalents
            factor = MLEM_WALL_FACTOR
        elif method == "auto":
            cost, factor = float(knob["budget"]), MLEM_WALL_FACTOR
        elif method == "stitch":
            fr = knob.get("fractions") or [0.4] + [0.0] * (len(L.costs) - 2)
            cost = knob["steps"] * (sum(f * c / L.costs[-1] for f, c in zip(fr, L.costs)) + 1 - sum(fr))
            factor = 1.0
        else:
            cost, factor = float(knob["steps"]), 1.0
        sec = cost * n * unit * factor
        per_run.append({"run": _label(method, knob), "predicted_top_equivalents": cost, "seconds": sec})
        total += sec
    kinds = {_pathwise_kind(m, k) for m, k in runs}
    em_again = sum(
        r["predicted_top_equivalents"] * (MLEM_WALL_FACTOR if m == "mlem" else 1.0)
        for r, (m, k) in zip(per_run, runs)
        if _pathwise_kind(m, k) == "em"
    )  # em_pathwise's batch
    ref = (
        pathwise_n
        * unit
        * ((em_ref_steps + em_again if "em" in kinds else 0) + (ode_ref_steps if "ode" in kinds else 0))
    )
    return {
        "seconds": total + ref,
        "runs_seconds": total,
        "references_seconds": ref,
        "per_run": per_run,
        "seconds_per_top_equivalent": unit,
        "mlem_wall_factor": MLEM_WALL_FACTOR,
    }


#: Metrics whose bootstrap replicates are centred on the point estimate before the percentile interval (their
#: bootstrap is biased: see percentile_ci); KID's replicates (distinct pairs only) are not.
CENTRED = ("fd",)


def em_pathwise_sq(pipe, runs, pn: int, ref_steps: int, seed: int, echo: Callable[[str], None] = print) -> Dict:
    """Squared pathwise distances of EM-family runs ((method, knobs) pairs whose sampler is "em"): each run once
    more on ``pn`` samples from one ``torch.Generator().manual_seed(seed)`` (so x_T and the virtual Brownian tree
    are the same in every run, whatever its step count) against EM-top with ``ref_steps`` steps on them.
    Returns ``{label: (pn,) float64 tensor}``."""

    with torch.no_grad():
        echo(f"pathwise reference: EM-top {ref_steps} steps on {pn} samples (one generator: shared Brownian tree)")
        ref = _one_generator_run(pipe, "em", {"steps": ref_steps}, pn, seed)
        return {_label(m, k): squared_distances(_one_generator_run(pipe, m, k, pn, seed), ref) for m, k in runs}


def _one_generator_run(pipe, method: str, knob: Dict, pn: int, seed: int) -> torch.Tensor:
    """``pn`` samples from one ``Generator(seed)``: the same x_T and virtual Brownian tree whatever the step count."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipe(pn, method=method, generator=torch.Generator().manual_seed(int(seed)), **knob).x


def _em_pathwise_rows(sq: Dict, counts: torch.Tensor, ref_steps: int, seed: int, pn: int) -> Dict[str, Dict]:
    return {
        label: {
            "pathwise_error": math.sqrt(float(v.mean())),
            "pathwise_error_ci": _interval((counts @ v / pn).sqrt()),
            "pathwise_reference": f"EM-top {ref_steps} steps, same noise and Brownian path",
            "pathwise_samples": f"a separate batch of {pn} from Generator({seed})",
        }
        for label, v in sq.items()
    }


def em_pathwise(
    pipe, runs, pn: int, ref_steps: int, seed: int, boot: int, boot_seed: int, echo: Callable[[str], None] = print
) -> Dict[str, Dict]:
    """Pathwise errors of EM-family runs (:func:`em_pathwise_sq`) with bootstrap intervals over the ``pn`` samples.
    Returns ``{label: {"pathwise_error", "pathwise_error_ci", "pathwise_reference", "pathwise_samples"}}``."""
    sq = em_pathwise_sq(pipe, runs, pn, ref_steps, seed, echo)
    return _em_pathwise_rows(sq, bootstrap_counts(pn, boot, boot_seed), ref_steps, seed, pn)


def repair_em_pathwise(path: str, ladder: str, echo: Callable[[str], None] = print) -> Dict:
    """Recompute the EM-family pathwise errors of a results JSON written before :func:`em_pathwise` existed
    (its EM runs were measured with per-sample generators, i.e. without a shared Brownian path) and rewrite
    it, with a note. Uses the JSON's own settings (seed, pathwise_n, em_ref_steps, boot, boot_seed)."""
    import json

    with open(path) as f:
        d = json.load(f)
    s = d["settings"]
    pipe = MultilevelPipeline.from_pretrained(ladder)
    runs = [(m, k) for m, k in s["runs"] if _pathwise_kind(m, k) == "em"]
    with single_thread():
        em = em_pathwise(pipe, runs, s["pathwise_n"], s["em_ref_steps"], s["seed"], s["boot"], s["boot_seed"] + 1, echo)
    for row in d["runs"]:
        if row["label"] in em:
            row["pathwise_error_per_sample_generators"] = row.get("pathwise_error")
            row.update(em[row["label"]])
            d["summary"]["pathwise_error"][row["label"]] = row["pathwise_error"]
            echo(
                f"{row['label']}: pathwise error {row['pathwise_error']:.3g} (was {row['pathwise_error_per_sample_generators']:.3g} "
                "without a shared Brownian path)"
            )
    annotate_equal_cost(d["runs"], d["equal_cost"])
    d["notes"].append("equal_cost entries annotated after the run (annotate_equal_cost: top_level_fires_every_step)")
    d["notes"].append(
        "EM-family pathwise errors recomputed after the run by multilevel_em.bench.images.repair_em_pathwise "
        "(a separate batch from Generator(seed) with a shared Brownian tree); the run's own values, measured "
        "with per-sample generators whose EM increments are not shared across step counts, are kept as "
        "pathwise_error_per_sample_generators"
    )
    d["noise"] = (
        "sample i of every run from sample_generators(seed, i): the same initial noise in every run; EM's "
        "Brownian increments are then drawn step by step (not shared across step counts), so the EM pathwise "
        "errors use a separate batch from Generator(seed) with a shared Brownian tree"
    )
    write_json(path, d)
    return d


def _fingerprint(pipe, quality, cfg: Dict, n: int, pn: int, seed: int) -> Dict:
    """What every cached unit shares: the scoring and the sampling settings (not ``boot``: the bootstrap is redone
    at analysis; not the weights: each unit records the levels it ran, :func:`_depends`)."""
    L = pipe.ladder
    return {
        "dataset": quality.dataset,
        "reference": quality.reference_name,
        "extractor": quality.extractor,
        "schedule": schedule_to_dict(L.schedule),
        "shape": list(L.shape),
        "n": n,
        "pathwise_n": pn,
        "seed": int(seed),
        "batch": cfg["batch"],
        "em_ref_steps": cfg["em_ref_steps"],
        "ode_ref_steps": cfg["ode_ref_steps"],
        "torch": torch.__version__,
    }


def _weights_digest(unet) -> str:
    """sha256 of a UNet's weights (names, dtypes, shapes, bytes) and its config: the same for a copy of the level in
    another ladder folder (the distilled ladder's top is its teacher)."""
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}  # not _name_or_path (a folder)
    h = hashlib.sha256(json.dumps(jsonable(config), sort_keys=True, default=str).encode())
    for k, v in sorted(unet.state_dict().items()):
        t = v.detach().contiguous().cpu()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _depends(pipe, ladder: str, method: Optional[str], knob: Dict, digests: List[str]) -> Dict:
    """The inputs a unit is computed from: the levels it runs (their weights digests) and, for plans, the
    calibration file. A unit of the top model alone stays valid when only the cheaper levels change."""
    if method is None or method in SAMPLERS:
        return {"levels": [digests[-1]]}
    if method == "stitch":
        fr = knob.get("fractions") or [0.4] + [0.0] * (len(digests) - 2)
        return {"levels": [d for d, f in zip(digests, list(fr) + [1.0]) if f > 0]}
    cal = os.path.join(ladder, "calibration.json")
    return {"levels": list(digests), "calibration": file_sha256(cal) if os.path.isfile(cal) else None}


def _unit_costs(units, est: Dict, pn: int, cfg: Dict) -> List[float]:
    """Estimated seconds of each unit (for balancing shards)."""
    per_run = {r["run"]: r for r in est["per_run"]}
    unit = est["seconds_per_top_equivalent"]
    out = []
    for key, kind, payload, _ in units:
        if kind == "run":
            out.append(per_run[key]["seconds"])
        elif kind == "ode_ref":
            out.append(pn * cfg["ode_ref_steps"] * unit)
        elif kind == "em_ref":
            out.append(pn * cfg["em_ref_steps"] * unit)
        else:
            out.append(pn * per_run[_label(*payload)]["predicted_top_equivalents"] * unit)
    return out


def _reference_rows(quality, ref_feats: torch.Tensor, counts: torch.Tensor, n: int, seed: int) -> List[Dict]:
    """Real images scored like the runs, at the same n: the floor (training images) and blurred training images
    ("clearly worse"); empty when the reference set is the training set (digits)."""
    if quality.floor_pool is None:
        return []
    from .fashion_reference import BLURS, gaussian_blur

    idx = torch.randperm(len(quality.floor_pool), generator=torch.Generator().manual_seed(int(seed)))[:n]
    x = quality.floor_pool[idx]
    images = {"training images (the floor)": x}
    for sigma in BLURS:
        images[f"training images blurred, sigma {sigma:g} px"] = gaussian_blur(x, sigma)
    rows = []
    for name, im in images.items():
        f = quality.features(im)
        fd, kid = frechet_distance(f, ref_feats), kid_unbiased(f, ref_feats)
        rows.append(
            {
                "images": name,
                "n": n,
                "fd": fd,
                "fd_ci": _interval(frechet_bootstrap(f, ref_feats, counts), "fd", fd),
                "kid": kid,
                "kid_ci": _interval(kid_bootstrap(f, ref_feats, counts), "kid", kid),
                "samples": f"{n} training images drawn with torch.randperm (seed {seed})",
            }
        )
    return rows


def _interval(reps: torch.Tensor, metric: str = "", point: Optional[float] = None) -> List[float]:
    return list(percentile_ci(reps, LEVEL, center=point if metric in CENTRED else None))


def run_images_bench(
    ladder: str,
    *,
    quick: bool = False,
    n: Optional[int] = None,
    runs: Optional[Sequence] = None,
    boot: Optional[int] = None,
    seed: int = 0,
    boot_seed: int = 0,
    pathwise_n: Optional[int] = None,
    em_ref_steps: Optional[int] = None,
    ode_ref_steps: Optional[int] = None,
    batch: Optional[int] = None,
    out: Optional[str] = "results/images.json",
    plot_path: Optional[str] = "results/images.png",
    command: Optional[str] = None,
    echo: Callable[[str], None] = print,
    dataset: Optional[str] = None,
    data_dir: Optional[str] = None,
    cache_dir: Optional[str] = None,
    shard: Optional[str] = None,
) -> Dict:
    """Run every setting (module docstring); write the JSON and the plot and return the results.

    Args:
        ladder: a ladder folder with a calibration (ML-EM's plans).
        quick: the small settings of :data:`SETTINGS` (tests; < 1 min on 2 cores).
        n: samples per run (>= :data:`N_MIN`); runs, boot, pathwise_n, em_ref_steps, ode_ref_steps,
            batch: override the settings (``runs``: (method, knobs) pairs as in :data:`FULL_RUNS`).
        seed: noise seed (sample i of every run uses ``sample_generators(seed, [i])``).
        boot_seed: seed of the bootstrap resamples (the same for every run: paired).
        dataset: whose extractor and reference set score the images (:func:`quality_reference`); default
            the ladder's own data set (``model_index.json``), else digits. It also picks the default
            settings: :data:`SETTINGS` ``"fashion"`` for Fashion-MNIST, ``"full"`` otherwise.
        data_dir: Fashion-MNIST's IDX folder (default: the Debian package's).
        cache_dir: a folder keeping every finished run (features, costs, its first pathwise_n samples), so an
            interrupted benchmark resumes where it stopped; entries of other settings or another ladder are
            refused, naming the folder.
        shard: ``"i/k"``: compute only the i-th of k shares of the runs (balanced by estimated cost) into
            ``cache_dir`` and return without analysing; k processes (one per core) fill the cache, then a run
            without ``shard`` analyses.

    Raises ValueError (naming the argument) for bad settings, FloatingPointError for NaN samples or metrics.
    """
    pipe = MultilevelPipeline.from_pretrained(ladder)
    dataset = dataset or ladder_dataset(pipe.ladder) or "digits"
    cfg = dict(SETTINGS["quick" if quick else "fashion" if dataset.startswith("fashion") else "full"])
    for key, val in (
        ("n", n),
        ("runs", runs),
        ("boot", boot),
        ("pathwise_n", pathwise_n),
        ("em_ref_steps", em_ref_steps),
        ("ode_ref_steps", ode_ref_steps),
        ("batch", batch),
    ):
        if val is not None:
            cfg[key] = val
    for key in ("n", "boot", "pathwise_n", "em_ref_steps", "ode_ref_steps", "batch"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{key}: expected a positive int, got {v!r}")
    n = cfg["n"]
    if n < N_MIN:
        raise ValueError(f"n: expected at least {N_MIN} samples per run, got {n}")
    if cfg["boot"] < 20:
        raise ValueError(f"boot: expected at least 20 bootstrap resamples, got {cfg['boot']}")
    pn = min(cfg["pathwise_n"], n)
    if pn < 2:
        raise ValueError(f"pathwise_n: expected at least 2, got {pn}")
    plan_runs = _check_runs(cfg["runs"])
    if any(m in ("mlem", "auto") for m, _ in plan_runs) and pipe.calibration is None:
        raise ValueError(f"{ladder}: ML-EM and auto runs need a calibration (mlem calibrate --ladder {ladder})")
    if any(m == "auto" for m, _ in plan_runs) and not pipe.calibration.samplers:
        raise ValueError(
            f"{ladder}: the planner's choice (auto runs) needs a calibration with sampler fits "
            f"(mlem calibrate --ladder {ladder} --samplers {','.join(registry.measurable_samplers())})"
        )
    shard_i, shard_k = check_shard(shard)
    if shard is not None and cache_dir is None:
        raise ValueError("shard: a shard writes its runs to cache_dir; give cache_dir too")
    quality = quality_reference(dataset, pipe.ladder.sample_size, data_dir)
    if quality.floor_pool is not None and n > len(quality.floor_pool):
        raise ValueError(f"n: the training split has {len(quality.floor_pool)} images, fewer than n = {n}")
    est = estimate_seconds(pipe, plan_runs, n, pn, cfg["em_ref_steps"], cfg["ode_ref_steps"])
    echo(
        f"{len(plan_runs)} runs x {n} samples; estimated {est['seconds'] / 60:.1f} min on 1 thread "
        f"(counted cost x {est['seconds_per_top_equivalent'] * 1e3:.3g} ms per sample per top-level equivalent, ML-EM x "
        f"{MLEM_WALL_FACTOR:g}; references {est['references_seconds'] / 60:.1f} min)"
    )
    gens_seed = int(seed)
    kinds = {_pathwise_kind(m, k) for m, k in plan_runs}
    em_runs = [(m, k) for m, k in plan_runs if _pathwise_kind(m, k) == "em"]
    # Units of work, each cached on its own: every run (features, costs, its first pn samples), the ODE
    # reference (pn samples), EM's pathwise reference (pn samples from one generator) and every EM-family run's
    # squared distances to it on those samples. Each records the levels (and calibration) it was computed from.
    digests = [_weights_digest(u) for u in pipe.ladder.unets]
    units = [(_label(m, k), "run", (m, k), _depends(pipe, ladder, m, k, digests)) for m, k in plan_runs]
    if "ode" in kinds or "auto" in {m for m, _ in plan_runs}:
        units.append((ODE_REF, "ode_ref", None, _depends(pipe, ladder, None, {}, digests)))
    ref_dep = _depends(pipe, ladder, None, {}, digests)  # the references run the top level alone
    if em_runs:
        units.append((EM_REF, "em_ref", None, ref_dep))
        for m, k in em_runs:
            units.append((EM_PATHWISE + _label(m, k), "em_pathwise", (m, k), _depends(pipe, ladder, m, k, digests)))
    cache = RunCache(cache_dir, _fingerprint(pipe, quality, cfg, n, pn, seed))
    if cache_dir is not None:
        done = sum(cache.fresh(key, dep) for key, _, _, dep in units)
        echo(f"cache: {cache_dir} ({done} of {len(units)} units done)")
    started = time.perf_counter()

    def sample(method, knob, count):
        """Samples 0..count-1 in batches; (x, top-eq per sample, {"wall", "cpu"} seconds per sample, last report).
        One torch thread: the process's CPU time is the computation's cost even while other jobs share the
        machine; wall time also counts waiting for a core."""
        xs, top, secs, rep = [], 0.0, {"wall": 0.0, "cpu": 0.0}, None
        for lo in range(0, count, cfg["batch"]):
            hi = min(count, lo + cfg["batch"])
            gens = sample_generators(gens_seed, range(lo, hi))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ML-EM inside an unmeasured sampler: recorded as plan_source
                t0, c0 = time.perf_counter(), time.process_time()
                res = pipe(hi - lo, method=method, generator=gens, **knob)
                secs["wall"] += time.perf_counter() - t0
                secs["cpu"] += time.process_time() - c0
            xs.append(res.x)
            top += res.report["top_equivalents_per_sample"] * (hi - lo)
            rep = res.report
        return torch.cat(xs), top / count, {k: v / count for k, v in secs.items()}, rep

    def compute(key, kind, payload):
        if kind == "ode_ref":
            echo(f"pathwise reference: DPM++ {cfg['ode_ref_steps']} steps on the first {pn} samples")
            return {"x": sample("dpmpp_2m", {"steps": cfg["ode_ref_steps"]}, pn)[0]}, {}
        if kind == "em_ref":
            echo(f"pathwise reference: EM-top {cfg['em_ref_steps']} steps on {pn} samples (one generator)")
            return {"x": _one_generator_run(pipe, "em", {"steps": cfg["em_ref_steps"]}, pn, seed)}, {}
        if kind == "em_pathwise":
            while not cache.fresh(EM_REF, ref_dep) and cache.claimed_elsewhere(EM_REF):
                time.sleep(10)  # another process is computing EM's reference
            if not cache.fresh(EM_REF, ref_dep):
                cache.claim(EM_REF)
                try:
                    cache.put(EM_REF, *compute(EM_REF, "em_ref", None), ref_dep)
                finally:
                    cache.release(EM_REF)
            ref = cache.get(EM_REF)[0]["x"]
            return {"sq": squared_distances(_one_generator_run(pipe, *payload, pn, seed), ref)}, {}
        method, knob = payload
        if method == "auto":
            twin = _auto_twin(pipe, knob)
            if twin is not None and cache.fresh(_label(*twin), _depends(pipe, ladder, twin[0], twin[1], digests)):
                # the planner chose the top model alone with a sampler and step count measured as its own run:
                # the same samples (same noise), so that run's unit is reused rather than computed twice
                tensors, meta = cache.get(_label(*twin))
                report = dict(meta["report"], auto=pipe.choose(knob["budget"]))
                return tensors, dict(meta, method=method, knob=knob, report=report, same_as=_label(*twin))
        x, top, wall, rep = sample(method, knob, n)
        f = quality.features(x)
        if not bool(torch.isfinite(f).all()):
            raise FloatingPointError(f"{key}: the classifier's features are NaN or Inf")
        meta = {"method": method, "knob": knob, "top": top, "wall": wall["wall"], "cpu": wall["cpu"], "report": rep}
        return {"features": f, "x_head": x[:pn].clone()}, meta

    mine = units if shard is None else shard_units(units, _unit_costs(units, est, pn, cfg), shard_i, shard_k)
    with single_thread(), torch.no_grad():
        for key, kind, payload, dep in mine:
            if cache.fresh(key, dep):
                echo(f"{key}: from the cache ({cache.path(key)})")
                continue
            if not cache.claim(key):
                echo(f"{key}: being computed by process {cache.holder(key)}; skipped")
                continue
            try:
                tensors, meta = compute(key, kind, payload)
                cache.put(key, tensors, meta, dep)
            finally:
                cache.release(key)
        if shard is None:  # wait for the units other processes are computing
            waiting = [key for key, _, _, dep in units if not cache.fresh(key, dep) and cache.claimed_elsewhere(key)]
            if waiting:
                echo(f"waiting for {len(waiting)} units other processes are computing: {', '.join(waiting)}")
            while waiting:
                time.sleep(10)
                waiting = [key for key in waiting if cache.claimed_elsewhere(key)]
    if shard is not None:
        done = [key for key, _, _, _ in mine]
        echo(f"shard {shard_i + 1}/{shard_k}: {len(done)} units in {cache_dir}; run without --shard to analyse")
        return {"shard": [shard_i + 1, shard_k], "units": done, "cache_dir": cache_dir}
    ref_feats = quality.features(quality.reference)
    counts = bootstrap_counts(n, cfg["boot"], boot_seed)
    counts_p = bootstrap_counts(pn, cfg["boot"], boot_seed + 1)
    references = _reference_rows(quality, ref_feats, counts, n, seed)
    rows: List[Dict] = []
    reps: Dict[str, Dict[str, torch.Tensor]] = {}
    missing = [key for key, _, _, dep in units if not cache.fresh(key, dep)]
    if missing:  # only when another process changed the cache meanwhile
        raise ValueError(f"cache_dir: {cache_dir} lacks finished units {missing}; run again to compute them")
    sq = {_label(m, k): cache.get(EM_PATHWISE + _label(m, k))[0]["sq"] for m, k in em_runs}
    em_path = _em_pathwise_rows(sq, counts_p, cfg["em_ref_steps"], seed, pn)
    ode_ref = cache.get(ODE_REF)[0]["x"] if ODE_REF in cache else None
    for method, knob in plan_runs:
        label = _label(method, knob)
        tensors, meta = cache.get(label)
        if meta.get("method") != method or meta.get("knob") != jsonable(knob):
            raise ValueError(f"cache_dir: {cache.path(label)} holds another run under the label {label!r}")
        f, x_head, top, rep = tensors["features"], tensors["x_head"], meta["top"], meta["report"]
        wall, cpu = meta["wall"], meta["cpu"]
        kid, fd = kid_unbiased(f, ref_feats), frechet_distance(f, ref_feats)
        kb, fb = kid_bootstrap(f, ref_feats, counts), frechet_bootstrap(f, ref_feats, counts)
        choice = rep.get("auto") or {}
        sampler_run = _sampler(method, knob) if method != "auto" else choice.get("sampler") or choice.get("method")
        row = {
            "label": label,
            "family": _family(method, knob),
            "method": method,
            "sampler": sampler_run,
            **knob,
            "steps_run": rep["steps"],
            "top_equivalents": top,
            "wall_seconds_per_sample": wall,
            "cpu_seconds_per_sample": cpu,
            "kid": kid,
            "kid_ci": _interval(kb, "kid", kid),
            "fd": fd,
            "fd_ci": _interval(fb, "fd", fd),
            "fd_ci_uncentred": _interval(fb),
            "evaluations_per_sample": [lv["evaluations_per_sample"] for lv in rep["levels"]],
        }
        if method == "auto":
            row["auto"] = rep.get("auto")
            row["same_as"] = meta.get("same_as")
        for m, point, b in (("kid", kid, kb), ("fd", fd, fb)):
            # the percentile interval can miss the point estimate when the bootstrap is biased (resamples
            # repeat samples: FD's finite-n bias grows; KID's heavy tail): recorded, not hidden
            row[f"{m}_boot_mean"] = float(b.mean())
            row[f"{m}_point_in_ci"] = row[f"{m}_ci"][0] <= point <= row[f"{m}_ci"][1]
        reps[label] = {"kid": kb, "fd": fb}
        kind = _pathwise_kind(method, knob) if method != "auto" else _auto_pathwise_kind(rep)
        if kind is None:
            row["pathwise_error"] = None
            row["pathwise_note"] = (
                f"the planner chose {row['sampler']}; its pathwise error is measured only for a deterministic choice"
                if method == "auto"
                else f"{row['sampler']} draws fresh noise for every step count: no converged pathwise solution to "
                "measure against"
            )
        elif kind == "em":
            row.update(em_path[label])
        else:
            sq = squared_distances(x_head, ode_ref)
            row["pathwise_error"] = math.sqrt(float(sq.mean()))
            row["pathwise_error_ci"] = _interval((counts_p @ sq / pn).sqrt())
            row["pathwise_reference"] = f"DPM++ {cfg['ode_ref_steps']} steps"
        if method == "mlem":
            plan, warned = _plan(pipe, knob)
            row["plan"] = rep.get("plan")
            row["plan_source"] = (
                f"the calibration's EM model ({warned})"
                if warned
                else f"the calibration's measured {row['sampler']} curve"
            )
        rows.append(row)
        pw = "" if row["pathwise_error"] is None else f", path err {row['pathwise_error']:.3g}"
        echo(
            f"{label:>28}: {top:7.2f} top-eq, {cpu * 1e3:7.2f} CPU ms/sample, KID {kid:8.4g} "
            f"[{row['kid_ci'][0]:.4g}, {row['kid_ci'][1]:.4g}], FD {fd:8.4g} "
            f"[{row['fd_ci'][0]:.3f}, {row['fd_ci'][1]:.3f}]{pw}"
        )
    for r in references:
        echo(f"{r['images']:>28}: FD {r['fd']:8.4g} [{r['fd_ci'][0]:.3f}, {r['fd_ci'][1]:.3f}]")
    levels = level_timings(pipe)
    for lv in levels:
        echo(
            f"level {lv['level']} (width {lv['width']}): {lv['seconds_per_sample'] * 1e3:.2f} ms/sample at batch 64, "
            f"seconds share {lv['seconds_share']:.3f} against FLOP share {lv['flop_share']:.3f} "
            f"({lv['seconds_over_flop_share']:.2f}x)"
        )
    total_wall = time.perf_counter() - started
    analysis = _analyse(rows, reps)
    analysis["lines"] += _headline(rows, reps, analysis)
    for line in analysis["lines"]:
        echo(line)
    cal = pipe.calibration
    result = {
        "benchmark": "images",
        "command": command,
        "quick": quick,
        "ladder": ladder,
        "widths": pipe.ladder.widths,
        "flops": pipe.ladder.costs,
        "gamma": None if cal is None else cal.gamma,
        "settings": {
            "n": n,
            "seed": seed,
            "boot": cfg["boot"],
            "boot_seed": boot_seed,
            "level": LEVEL,
            "pathwise_n": pn,
            "em_ref_steps": cfg["em_ref_steps"],
            "ode_ref_steps": cfg["ode_ref_steps"],
            "batch": cfg["batch"],
            "runs": [[m, k] for m, k in plan_runs],
            "equal_cost_slack": EQUAL_COST_SLACK,
        },
        "machine": f"{device_name(torch.device('cpu'))}, 1 torch thread, shared CPU ({platform.machine()})",
        "noise": (
            "sample i of every run from sample_generators(seed, i): the same initial noise in every run; "
            "EM's Brownian increments are then drawn step by step (not shared across step counts), so the "
            "EM pathwise errors use a separate batch from Generator(seed) with a shared Brownian tree"
        ),
        "dataset": quality.dataset,
        "reference_set": quality.reference_name + ", not resampled",
        "extractor": quality.extractor,
        "protocol": (
            f"{quality.extractor}; n = {n} generated samples per run against {quality.reference_name}; "
            f"{LEVEL:.0%} paired bootstrap intervals ({cfg['boot']} resamples)"
        ),
        "references": references,
        "levels": levels,
        "metrics": {
            "kid": f"unbiased MMD^2, cubic polynomial kernel, features of {quality.extractor} (unscaled)",
            "fd": f"Fréchet distance of Gaussians fitted to the features of {quality.extractor} (eigh square roots)",
            "ci": (
                f"{LEVEL:.0%} percentile bootstrap over the generated samples, {cfg['boot']} resamples, seed "
                f"{boot_seed}; the same resampled indices for every run, so differences are paired. KID's "
                "replicates pair only distinct original samples (no duplicate self-pairs: unbiased); FD's "
                "replicates (and those of FD differences) are shifted to have the point estimate as their mean "
                "before taking percentiles, removing the bootstrap's upward bias (fd_ci_uncentred: without "
                "the shift)"
            ),
            "point_in_ci": (
                "whether the point estimate lies inside its percentile interval; *_boot_mean is the "
                "replicates' mean (their offset from the point estimate is the bootstrap's bias estimate)"
            ),
            "resolved": "a difference is resolved when its paired bootstrap interval excludes 0 (per pair, uncorrected)",
            "pathwise_error": (
                f"RMS over {pn} samples (a subset, to save compute) of the Euclidean distance (data "
                f"scale, {'x'.join(map(str, pipe.ladder.shape))}) to the sampler's converged output from the same noise: em and ML-EM "
                f"in em: a separate batch of {pn} from Generator(seed) (shared Brownian tree) against "
                f"EM-top {cfg['em_ref_steps']} steps; ODE samplers (ddim, dpmpp_2m, stitch, ML-EM in "
                f"dpmpp_2m): the run's first {pn} samples against DPM++ {cfg['ode_ref_steps']} steps; "
                f"none for ddpm; CI by bootstrap over that subset (seed {boot_seed + 1})"
            ),
            "top_equivalents": "counted evaluations x FLOPs / top-level FLOPs, per sample (the pipeline's report)",
            "cpu_seconds_per_sample": (
                "CPU seconds of sampling per sample with one torch thread (batches of `batch`): the computation's "
                "cost, unaffected by other jobs sharing the machine; the seconds used in the comparisons"
            ),
            "wall_seconds_per_sample": "wall-clock seconds of the same (includes waiting for a core on a shared machine)",
        },
        "estimate": est,
        "wall_seconds_total": total_wall,
        "runs": rows,
        "reference_run": analysis["reference"],
        "fronts": analysis["fronts"],
        "equal_cost": analysis["equal_cost"],
        "pairs": analysis["pairs"],
        "summary": analysis["summary"],
        "summary_lines": analysis["lines"],
        "cache_dir": cache_dir,
        "notes": [
            "ML-EM inside DDPM is planned by the calibration's EM model: the calibration cannot measure DDPM "
            "(fresh noise per step count), so the plan cannot say whether it beats DDPM alone",
            "FD is biased upward at finite n; every run has the same n, so FDs are comparable here, not with FIDs elsewhere",
            "intervals are per run / per pair at the stated level, not corrected for the number of comparisons",
        ],
    }
    if plot_path:
        _plot(rows, plot_path, quality.dataset, references)
        result["plot"] = plot_path
    if out:
        write_json(out, result)
    return result


def _diff(reps, a: str, b: str, metric: str, rows_by: Dict) -> Dict:
    d = rows_by[a][metric] - rows_by[b][metric]
    lo, hi = _interval(reps[a][metric] - reps[b][metric], metric, d)
    return {"diff": d, "ci": [lo, hi], "resolved": lo > 0 or hi < 0}


def _analyse(rows: List[Dict], reps: Dict) -> Dict:
    """Reference-run differences, fronts, equal-cost comparisons of ML-EM, all pairs, and the summary."""
    by = {r["label"]: r for r in rows}
    single = [r for r in rows if r["method"] in SAMPLERS]  # the top model alone (not T-Stitch, ML-EM, the planner)
    lines: List[str] = []
    ref = max(single or rows, key=lambda r: r["top_equivalents"])  # the first of equals
    for r in rows:
        for m in ("kid", "fd"):
            d = _diff(reps, r["label"], ref["label"], m, by)
            r[f"{m}_diff"], r[f"{m}_diff_ci"], r[f"{m}_diff_resolved"] = d["diff"], d["ci"], d["resolved"]
    lines.append(f"reference run for the paired differences: {ref['label']} ({ref['top_equivalents']:.1f} top-eq)")
    fronts: Dict = {}
    for m in ("kid", "fd"):
        fam: Dict = {}
        for f in dict.fromkeys(r["family"] for r in rows):
            rs = [r for r in rows if r["family"] == f]
            fam[f] = _front(rs, m)
        fronts[m] = {"by_family": fam, "overall": _front(rows, m)}
    for m in ("kid", "fd"):
        lines.append(f"{m.upper()} front over all runs: " + "; ".join(fronts[m]["overall"]))
    equal = []
    for r in rows:
        if r["method"] not in ("mlem", "auto"):
            continue
        cands = [s for s in single if s["top_equivalents"] <= r["top_equivalents"] * (1 + EQUAL_COST_SLACK)]
        entry = {"mlem": r["label"], "top_equivalents": r["top_equivalents"]}
        for m in ("kid", "fd"):
            if not cands:
                entry[m] = None
                continue
            best = min(cands, key=lambda s: s[m])
            d = _diff(reps, r["label"], best["label"], m, by)
            verdict = "ML-EM better" if d["ci"][1] < 0 else "single model better" if d["ci"][0] > 0 else "not resolved"
            entry[m] = {
                "best_single": best["label"],
                "best_single_top_equivalents": best["top_equivalents"],
                **d,
                "verdict": verdict,
            }
            lines.append(
                f"{r['label']} ({r['top_equivalents']:.1f} top-eq) vs the best single model at most that cost "
                f"by {m.upper()}, {best['label']} ({best['top_equivalents']:.1f}): diff {_fmt(m, d['diff'])} "
                f"[{_fmt(m, d['ci'][0])}, {_fmt(m, d['ci'][1])}]: {verdict}"
            )
        same = [
            s
            for s in single
            if s["method"] == r["sampler"] and s["top_equivalents"] <= r["top_equivalents"] * (1 + EQUAL_COST_SLACK)
        ]
        if same:
            s = max(same, key=lambda s: s["top_equivalents"])
            entry["same_sampler"] = {
                "single": s["label"],
                "kid": _diff(reps, r["label"], s["label"], "kid", by),
                "fd": _diff(reps, r["label"], s["label"], "fd", by),
            }
        equal.append(entry)
    annotate_equal_cost(rows, equal)
    pairs = []
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            pairs.append(
                {
                    "a": a["label"],
                    "b": b["label"],
                    "kid": _diff(reps, a["label"], b["label"], "kid", by),
                    "fd": _diff(reps, a["label"], b["label"], "fd", by),
                }
            )
    summary = {"reference_run": ref["label"], "pairs": len(pairs)}
    for m in ("kid", "fd"):
        summary[f"{m}_resolved_pairs"] = sum(p[m]["resolved"] for p in pairs)
        summary[f"{m}_unresolved"] = [[p["a"], p["b"]] for p in pairs if not p[m]["resolved"]]
        summary[f"mlem_better_than_best_single_at_equal_cost_{m}"] = [
            e["mlem"] for e in equal if e.get(m) and e[m]["verdict"] == "ML-EM better"
        ]
        summary[f"single_better_than_mlem_at_equal_cost_{m}"] = [
            e["mlem"] for e in equal if e.get(m) and e[m]["verdict"] == "single model better"
        ]
    summary["kid_and_fd_disagree"] = [
        [p["a"], p["b"]]
        for p in pairs
        if p["kid"]["resolved"] and p["fd"]["resolved"] and (p["kid"]["diff"] > 0) != (p["fd"]["diff"] > 0)
    ]
    pw = [r for r in rows if r.get("pathwise_error") is not None]
    summary["pathwise_error"] = {r["label"]: r["pathwise_error"] for r in pw}
    lines.append(
        f"resolved (paired {LEVEL:.0%} CI excludes 0): KID {summary['kid_resolved_pairs']}/{len(pairs)} pairs, "
        f"FD {summary['fd_resolved_pairs']}/{len(pairs)}; resolved by both with opposite signs: "
        f"{len(summary['kid_and_fd_disagree'])}"
    )
    for m in ("kid", "fd"):
        better = summary[f"mlem_better_than_best_single_at_equal_cost_{m}"]
        worse = summary[f"single_better_than_mlem_at_equal_cost_{m}"]
        lines.append(
            f"{m.upper()}: ML-EM better than the best single model at equal cost in {len(better)} of "
            f"{len(equal)} ML-EM runs, worse in {len(worse)}"
        )
    return {
        "reference": ref["label"],
        "fronts": fronts,
        "equal_cost": equal,
        "pairs": pairs,
        "summary": summary,
        "lines": lines,
    }


def _headline(rows: List[Dict], reps: Dict, analysis: Dict) -> List[str]:
    """The two questions users ask, answered from the paired FD differences (stored in ``analysis["summary"]``):

    * which run reaches the best FD any run reaches, and the cheapest run (in top-level equivalents and in
      seconds) not resolved worse than it;
    * the target: does ML-EM or the planner's choice reach the best single-model FD (not resolved worse) at no
      more than half that run's cost, in top-level equivalents and in seconds?"""
    by = {r["label"]: r for r in rows}
    summary, lines = analysis["summary"], []

    def not_worse(a: Dict, b: Dict) -> Dict:
        d = _diff(reps, a["label"], b["label"], "fd", by)
        return {**d, "not_resolved_worse": a is b or d["ci"][0] <= 0}

    best = min(rows, key=lambda r: r["fd"])
    within = [r for r in rows if not_worse(r, best)["not_resolved_worse"]]
    cheap, fast = (min(within, key=lambda r: r[k]) for k in ("top_equivalents", "cpu_seconds_per_sample"))
    summary["best_fd"] = {
        "run": best["label"],
        "fd": best["fd"],
        "top_equivalents": best["top_equivalents"],
        "cpu_seconds_per_sample": best["cpu_seconds_per_sample"],
        "within_noise": [r["label"] for r in within],
        "cheapest_within_noise": cheap["label"],
        "fastest_within_noise": fast["label"],
    }
    lines.append(
        f"best FD: {best['label']} ({best['fd']:.4g}, {best['top_equivalents']:.1f} top-eq, "
        f"{best['cpu_seconds_per_sample'] * 1e3:.1f} CPU ms/sample); the cheapest run not resolved worse: "
        f"{cheap['label']} ({cheap['top_equivalents']:.1f} top-eq), the fastest: {fast['label']} "
        f"({fast['cpu_seconds_per_sample'] * 1e3:.1f} CPU ms/sample)"
    )
    single = [r for r in rows if r["method"] in SAMPLERS]
    multi = [r for r in rows if r["method"] in ("mlem", "auto")]
    if not single or not multi:
        return lines
    bs = min(single, key=lambda r: r["fd"])
    checks = []
    for r in multi:
        d = not_worse(r, bs)
        checks.append(
            {
                "run": r["label"],
                "fd_diff": d["diff"],
                "fd_diff_ci": d["ci"],
                "not_resolved_worse": d["not_resolved_worse"],
                "cost_ratio_top_equivalents": r["top_equivalents"] / bs["top_equivalents"],
                "cost_ratio_seconds": r["cpu_seconds_per_sample"] / bs["cpu_seconds_per_sample"],
            }
        )
    met = [
        c
        for c in checks
        if c["not_resolved_worse"] and c["cost_ratio_top_equivalents"] <= 0.5 and c["cost_ratio_seconds"] <= 0.5
    ]
    summary["half_cost_target"] = {
        "best_single": bs["label"],
        "best_single_fd": bs["fd"],
        "best_single_top_equivalents": bs["top_equivalents"],
        "best_single_cpu_seconds_per_sample": bs["cpu_seconds_per_sample"],
        "runs": checks,
        "met_by": [c["run"] for c in met],
        "rule": "FD difference to the best single-model run not resolved worse (paired CI lower end <= 0) at "
        "<= 0.5x its top-level equivalents and <= 0.5x its seconds per sample",
    }
    lines.append(
        f"half-cost target (reach the best single-model FD, {bs['label']} {bs['fd']:.4g}, at <= half its cost in "
        f"top-level equivalents and seconds): {'met by ' + ', '.join(c['run'] for c in met) if met else 'not met'}"
    )
    for c in checks:
        lines.append(
            f"  {c['run']}: FD diff {c['fd_diff']:+.4g} [{c['fd_diff_ci'][0]:+.4g}, {c['fd_diff_ci'][1]:+.4g}] at "
            f"{c['cost_ratio_top_equivalents']:.2f}x the top-level equivalents, {c['cost_ratio_seconds']:.2f}x the seconds"
        )
    return lines


def level_timings(pipe, batch: int = 64, repeats: int = 7) -> List[Dict]:
    """Each level's single-thread seconds per sample at ``batch`` (medians of ``repeats`` calls, the levels
    interleaved so that machine load hits them alike) against its FLOP share: how far a level is from cheap
    in seconds. CPU time of this process (one thread: its cost, also on a shared machine)."""
    import statistics

    L = pipe.ladder
    models = L.eps_models()
    x = torch.randn(batch, *L.shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((batch,), 0.5)
    times: List[List[float]] = [[] for _ in models]
    with single_thread(), torch.no_grad():
        for m in models:
            m(x, t)  # warm-up
        for _ in range(repeats):
            for i, m in enumerate(models):
                t0 = time.process_time()
                m(x, t)
                times[i].append((time.process_time() - t0) / batch)
    sec = [statistics.median(v) for v in times]
    return [
        {
            "level": i + 1,
            "width": L.widths[i],
            "flops": L.costs[i],
            "flop_share": L.costs[i] / L.costs[-1],
            "seconds_per_sample": sec[i],
            "seconds_share": sec[i] / sec[-1],
            "seconds_over_flop_share": (sec[i] / sec[-1]) / (L.costs[i] / L.costs[-1]),
        }
        for i in range(len(models))
    ]


def markdown_tables(res: Dict) -> str:
    """The results as the docs quote them: one table of every run (cost in top-level equivalents and
    milliseconds, KID, FD, path error, with intervals) and the real-image references below it."""

    def ci(v, lo_hi, fmt="{:.4g}"):
        return f"{fmt.format(v)} [{fmt.format(lo_hi[0])}, {fmt.format(lo_hi[1])}]"

    lines = [
        "| run | top-eq | CPU ms/sample | KID [95% CI] | FD [95% CI] | path error [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(res["runs"], key=lambda r: (r["family"], r["top_equivalents"])):
        pw = "—" if r.get("pathwise_error") is None else ci(r["pathwise_error"], r["pathwise_error_ci"], "{:.3g}")
        lines.append(
            f"| {r['label']} | {r['top_equivalents']:.1f} | {r['cpu_seconds_per_sample'] * 1e3:.1f} | "
            f"{ci(r['kid'], r['kid_ci'])} | {ci(r['fd'], r['fd_ci'])} | {pw} |"
        )
    for ref in res.get("references", []):
        lines.append(
            f"| {ref['images']} (real images) | — | — | {ci(ref['kid'], ref['kid_ci'])} | {ci(ref['fd'], ref['fd_ci'])} | — |"
        )
    return "\n".join(lines) + "\n"


def annotate_equal_cost(rows: List[Dict], equal: List[Dict]) -> None:
    """Flag the ML-EM runs that are the top model alone in disguise: where the plan's top level fires at every
    step (its evaluations per sample equal the step count), ML-EM's output is the top model's with that sampler
    and step count (the lower levels' telescoping terms cancel), so a verdict against single-model runs with
    fewer steps measures the extra steps, not the randomization."""
    by = {r["label"]: r for r in rows}
    for e in equal:
        r = by[e["mlem"]]
        top_evals = r["evaluations_per_sample"][-1]
        e["top_level_fires_every_step"] = bool(top_evals >= r["steps_run"] * (1 - 1e-3))
        e["top_level_evaluations_per_sample"] = top_evals
        e["steps_run"] = r["steps_run"]
        if e["top_level_fires_every_step"]:
            e["note"] = (
                f"the top level fires at every one of the {r['steps_run']} steps: this run is the top model "
                f"alone with {r['sampler']} at {r['steps_run']} steps (plus unused lower-level calls); a "
                "difference from a single-model run with fewer steps is a step-count effect, not ML-EM's"
            )


def _fmt(metric: str, v: float) -> str:
    return f"{v:+.4g}"


def _front(rows: List[Dict], metric: str) -> List[str]:
    """Labels of the runs on the cost-quality front (no cheaper-or-equal run is better), by cost."""
    pts = pareto_front((r["top_equivalents"], r[metric]) for r in rows)
    out = []
    for cost, val in pts:
        out.append(next(r["label"] for r in rows if r["top_equivalents"] == cost and r[metric] == val))
    return out


#: The plotted families: every sampler alone, T-Stitch, and ML-EM inside the samplers that have a style for it.
_FAMILIES = (
    *SAMPLERS,
    "stitch",
    "auto",
    *(f"mlem:{name}" for name in SAMPLERS if registry.SAMPLER_SPECS[name].mlem_style),
)
STYLE = {key: registry.style(key) for key in _FAMILIES}
FAMILY_NAMES = {key: registry.title(key) for key in _FAMILIES}


def _plot(rows: List[Dict], path: str, dataset: str = "digits", references: Sequence[Dict] = ()) -> None:
    """KID and FD against top-level equivalents, and FD against seconds per sample; the real-image references
    (the floor, blurred images) as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._io import atomic_write

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.6))
    panels = (
        (axes[0], "kid", "KID", "top_equivalents", "top-level equivalents per sample"),
        (axes[1], "fd", "FD", "top_equivalents", "top-level equivalents per sample"),
        (axes[2], "fd", "FD", "cpu_seconds_per_sample", "CPU seconds per sample (1 thread)"),
    )
    for ax, m, name, xkey, xlabel in panels:
        for fam in dict.fromkeys(r["family"] for r in rows):
            rs = sorted((r for r in rows if r["family"] == fam), key=lambda r: r[xkey])
            color, marker = STYLE.get(fam, ("k", "o"))
            y = [r[m] for r in rs]
            # bars span the CI; where the point lies outside it (a biased bootstrap) the bar on that side is 0
            err = [[max(0.0, r[m] - r[f"{m}_ci"][0]) for r in rs], [max(0.0, r[f"{m}_ci"][1] - r[m]) for r in rs]]
            label = FAMILY_NAMES.get(fam, fam)
            # the planner's choice often is another run (the same samples): open, larger markers keep both visible
            auto = fam == "auto"
            ax.errorbar(
                [r[xkey] for r in rs],
                y,
                yerr=err,
                fmt=marker + ("--" if fam.startswith("mlem") else "-"),
                color=color,
                label=label,
                capsize=2,
                markersize=9 if auto else 5,
                markerfacecolor="none" if auto else color,
                linewidth=1 if auto else 1.5,
            )
        for ref, ls in zip(references, (":", "-.", "--")):
            ax.axhline(ref[m], color="0.4", linestyle=ls, linewidth=1, label=ref["images"])
        ax.set_xscale("log")
        if all(min(r[m], r[f"{m}_ci"][0]) > 0 for r in rows) and all(ref[m] > 0 for ref in references):
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(
            f"{name} vs {'the test images' if dataset.startswith('fashion') else 'all digits'} (classifier features)"
        )
        ax.set_title(f"{name} ({LEVEL:.0%} bootstrap CIs, paired noise)")
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.025 * ((len(labels) + 5) // 6), 1, 1))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)

"""Real ladders, real seconds: FLOP share against seconds share of SD 1.4 + BK-SDM and DiT S/B/XL levels.

The ladders users own are built here from their published configs with random weights (timing needs no
trained weights; nothing is downloaded): the UNet of Stable Diffusion 1.4 and the block-removed UNets of
BK-SDM base, small and tiny (one ladder, cheapest first), and DiT-S/2, B/2 and XL/2 (another). Per model:
FLOPs per image (``torch.utils.flop_counter`` on one sample, counted on the meta device: shapes only) and
seconds per image at batch sizes 1, 8 and 32, at latent size 32x32 (256x256 images) so that a CPU run stays
feasible, eager and compiled (``torch.compile``: default mode on the CPU, ``mode="reduce-overhead"`` (CUDA
graphs) on CUDA; ``dynamic=False`` and a dynamo reset per model and batch size, so nothing recompiles inside
a measurement), each after warm-up calls, the median of the timed repeats, under ``torch.inference_mode``,
fp32 on the CPU and fp16 on CUDA.

Then, per ladder: each level's seconds share against its FLOP share, and what that does to an ML-EM plan.
For the same budget in seconds, the closed-form rates of :mod:`multilevel_em.calibration.rates`
(lambda_l = mu delta_l / sqrt(c_l + c_{l-1}), mu sized by the expected-cost rule) are planned once with the
costs in FLOPs and once with the measured seconds; the FLOP plan's expected seconds are then what it really
costs. Random weights have no meaningful level differences, so delta_l is a stated ASSUMPTION: the shipped
digits ladder's measured delta_l(t) (multilevel_em/images/pretrained/digits/calibration.json), mapped by level
index from the top (a 4-level ladder takes all three digits corrections, a 3-level ladder the top two).

    mlem bench real-ladders                          # results/real_ladders.json (CPU: long; see the estimate)
    mlem bench real-ladders --no-compile             # eager only
    mlem bench real-ladders --models dit-s,dit-b --batches 1,8
    mlem bench real-ladders --device cuda --time-budget 120   # what `mlem bench gpu` runs inside its 8 minutes
    mlem bench real-ladders --quick                  # tiny stand-ins of the same classes (the test), seconds
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from .._io import write_json
from ..calibration import Calibration
from ..calibration.rates import (
    RateShape,
    added_variance,
    closed_form_probabilities,
    expected_cost,
    idle_probabilities,
)
from .common import DIGITS_LADDER, device_name, sync_device
from .outputs import add_overwrite_argument, check_outputs, default_outputs, threads_argument

# ----------------------------------------------------------------------------- the published configs

#: Stable Diffusion 1.4's UNet: huggingface.co/CompVis/stable-diffusion-v1-4, unet/config.json (diffusers'
#: UNet2DConditionModel; the keys left at diffusers' defaults are omitted). 859,520,964 parameters, as published.
SD14_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "center_input_sample": False,
}

#: BK-SDM's UNets as edits of SD 1.4's: github.com/Nota-NetsPresso/BK-SDM, src/unet_config/bk_{base,small,tiny}/
#: config.json (the configs its training script builds the students from, the same as nota-ai/bk-sdm-* on the
#: Hugging Face hub). Sure: read from those files; the parameter counts they give here, 579,384,964 (base),
#: 482,346,884 (small) and 323,384,964 (tiny), match the published 0.58B / 0.49B / 0.33B U-Nets.
#: base: one residual+attention pair per down stage and two per up stage (layers_per_block 1; "fewer blocks in
#: outer stages"); small: also no mid block; tiny: also no innermost (8x8 at 512 px) stage.
BK_SDM_EDITS = {
    "bk-sdm-base": {"layers_per_block": 1},
    "bk-sdm-small": {"layers_per_block": 1, "mid_block_type": None},
    "bk-sdm-tiny": {
        "layers_per_block": 1,
        "mid_block_type": None,
        "block_out_channels": (320, 640, 1280),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3,
        "up_block_types": ("CrossAttnUpBlock2D",) * 3,
    },
}

#: DiT's transformers (diffusers' DiTTransformer2DModel): huggingface.co/facebook/DiT-XL-2-256,
#: transformer/config.json for XL/2, and the DiT paper's table 1 (Peebles & Xie 2023) for S/2 and B/2, which
#: differ only in hidden size (heads x head dim), depth and heads: S 384 = 6 x 64, 12 blocks; B 768 = 12 x 64,
#: 12 blocks; XL 1152 = 16 x 72, 28 blocks. Patch 2, 4 latent channels, learned sigma (8 out), 1000 classes.
#: The FLOPs counted here (12.1, 46.0 and 237 GFLOPs at 32x32 latents) are twice the paper's 6.06, 23.0 and
#: 118.6 Gflops (multiply-adds). diffusers keeps one class/timestep embedding per block, so its parameter counts
#: (40M, 147M, 750M) exceed the paper's (33M, 130M, 675M); the extra weights are embedding lookups and small
#: per-image MLPs, a negligible share of the FLOPs.
DIT_COMMON = {
    "patch_size": 2,
    "in_channels": 4,
    "out_channels": 8,
    "sample_size": 32,
    "num_embeds_ada_norm": 1000,
    "norm_type": "ada_norm_zero",
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "norm_elementwise_affine": False,
}
DIT_SIZES = {"dit-s": (6, 64, 12), "dit-b": (12, 64, 12), "dit-xl": (16, 72, 28)}  # heads, head dim, blocks

SOURCES = {
    "sd-1.4": "CompVis/stable-diffusion-v1-4 unet/config.json",
    **{k: f"Nota-NetsPresso/BK-SDM src/unet_config/bk_{k.split('-')[-1]}/config.json" for k in BK_SDM_EDITS},
    "dit-s": "DiT paper table 1 (S/2), in facebook/DiT-XL-2-256's transformer config layout",
    "dit-b": "DiT paper table 1 (B/2), in facebook/DiT-XL-2-256's transformer config layout",
    "dit-xl": "facebook/DiT-XL-2-256 transformer/config.json",
}
LABELS = {
    "sd-1.4": "SD 1.4",
    "bk-sdm-base": "BK-SDM base",
    "bk-sdm-small": "BK-SDM small",
    "bk-sdm-tiny": "BK-SDM tiny",
    "dit-s": "DiT-S/2",
    "dit-b": "DiT-B/2",
    "dit-xl": "DiT-XL/2",
}
#: The ladders, cheapest level first.
LADDERS = {
    "sd": ("bk-sdm-tiny", "bk-sdm-small", "bk-sdm-base", "sd-1.4"),
    "dit": ("dit-s", "dit-b", "dit-xl"),
}
MODELS = tuple(m for ladder in LADDERS.values() for m in ladder)
FAMILY = {m: ("dit" if m.startswith("dit") else "unet") for m in MODELS}

LATENT = 32  # latent side: 256x256 images through SD's VAE (factor 8) and DiT-*/2-256
QUICK_LATENT = 8
TOKENS, QUICK_TOKENS = 77, 8  # prompt tokens (CLIP's 77 for SD); width = cross_attention_dim
BATCHES = (1, 8, 32)
CALLS = 50  # sampler calls per image in the plans (a 50-step sampler)
BUDGETS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # plan budgets: fractions of the seconds of the top model at every call


def config(name: str, quick: bool = False) -> dict:
    """The constructor arguments of model ``name``; ``quick``: a stand-in of the same class and the same
    structural edits with a few channels (the test's; its numbers mean nothing)."""
    if FAMILY[name] == "dit":
        heads, dim, blocks = DIT_SIZES[name]
        if quick:
            heads, dim, blocks = {"dit-s": (2, 4, 2), "dit-b": (4, 4, 2), "dit-xl": (4, 6, 3)}[name]
        c = dict(DIT_COMMON, num_attention_heads=heads, attention_head_dim=dim, num_layers=blocks)
        if quick:
            c["sample_size"] = QUICK_LATENT
        return c
    c = dict(SD14_UNET, **BK_SDM_EDITS.get(name, {}))
    if quick:
        c.update(
            sample_size=QUICK_LATENT,
            block_out_channels=tuple(min(8 * 2**i, 32) for i in range(len(c["block_out_channels"]))),
            norm_num_groups=4,
            attention_head_dim=2,
            cross_attention_dim=16,
        )
    return c


def build(name: str, quick: bool = False, device="cpu", dtype=torch.float32) -> torch.nn.Module:
    """Model ``name`` with random weights (seeded), in eval mode, on ``device`` in ``dtype``."""
    from diffusers import DiTTransformer2DModel, UNet2DConditionModel

    cls = DiTTransformer2DModel if FAMILY[name] == "dit" else UNet2DConditionModel
    torch.manual_seed(0)
    with torch.device(device):
        model = cls(**config(name, quick))
    return (model if dtype == torch.float32 else model.to(dtype=dtype)).eval()


def inputs(name: str, batch: int, quick: bool = False, device="cpu", dtype=torch.float32) -> dict:
    """One call's keyword arguments: latents (batch, 4, side, side), a timestep per row and the conditioning
    (SD: encoder_hidden_states (batch, 77, 768); DiT: class_labels)."""
    side = QUICK_LATENT if quick else LATENT
    g = torch.Generator().manual_seed(batch)
    kw = {
        ("hidden_states" if FAMILY[name] == "dit" else "sample"): torch.randn(batch, 4, side, side, generator=g),
        "timestep": torch.full((batch,), 500, dtype=torch.long),
    }
    if FAMILY[name] == "dit":
        kw["class_labels"] = torch.randint(0, 1000, (batch,), generator=g)
    else:
        width = config(name, quick)["cross_attention_dim"]
        kw["encoder_hidden_states"] = torch.randn(batch, QUICK_TOKENS if quick else TOKENS, width, generator=g)
    return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in kw.items()}


def count_flops(name: str, quick: bool = False) -> float:
    """FLOPs of one forward of one sample (torch.utils.flop_counter, on the meta device: shapes only)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build(name, quick, device="meta")
        kw = inputs(name, 1, quick, device="meta")
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(**kw)
    return float(counter.get_total_flops())


def count_params(name: str) -> int:
    """Parameters of the full-size model (built on the meta device)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build(name, device="meta").parameters())


# ----------------------------------------------------------------------------- timing


def time_calls(call: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> dict:
    """``warmup`` untimed calls (the first one's seconds kept: with torch.compile it holds the compilation),
    then ``repeats`` timed ones (synchronized on CUDA); their seconds and median."""
    first = None
    for i in range(warmup):
        sync_device(device)
        t = time.perf_counter()
        call()
        sync_device(device)
        if i == 0:
            first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        sync_device(device)
        t = time.perf_counter()
        call()
        sync_device(device)
        times.append(time.perf_counter() - t)
    return {"first_call_seconds": first, "seconds": times, "median_seconds": statistics.median(times)}


def gemm_rate(device: torch.device, dtype) -> float:
    """A rough FLOP/s of this device: a few 512^3 (CPU) or 4096^3 (CUDA) matrix products, for the estimate."""
    n = 4096 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    a @ a
    sync_device(device)
    t, k = time.perf_counter(), 0
    while time.perf_counter() - t < 0.3:
        a @ a
        sync_device(device)
        k += 1
    return 2 * n**3 * k / (time.perf_counter() - t)


#: Assumed on the estimate: convolutions and attention reach this fraction of the GEMM rate, and a compilation
#: takes this many seconds per model and batch size (inductor, a full-size UNet; CPU and CUDA alike).
EFFICIENCY = 0.5
COMPILE_GUESS = {"full": 120.0, "quick": 5.0}


def estimate(flops: Dict[str, float], models, batches, modes, warmup: int, repeats: int, rate: float, quick: bool):
    """Predicted seconds of the run (FLOPs over EFFICIENCY x the GEMM rate, plus COMPILE_GUESS per compiled cell)."""
    images = sum(batches) * (warmup + repeats)
    compute = sum(flops[m] for m in models) * images / (EFFICIENCY * rate)
    compile_s = COMPILE_GUESS["quick" if quick else "full"] * len(models) * len(batches) * ("compiled" in modes)
    return {"compute_seconds": compute * len(modes), "compile_seconds": compile_s}


def measure(
    models: Sequence[str],
    batches: Sequence[int],
    modes: Sequence[str],
    *,
    quick: bool,
    device: torch.device,
    dtype,
    warmup: int,
    repeats: int,
    flops: Dict[str, float],
    deadline: Optional[float] = None,
    echo=print,
) -> Dict[str, dict]:
    """Seconds per image of every model x mode x batch. Eager cells first (every model), then compiled ones;
    with a ``deadline`` (time.perf_counter() value) a cell predicted to pass it is skipped (and says so): its
    prediction is FLOPs x the slowest seconds per FLOP measured so far on this device (x 4 before any), plus
    for a compiled cell the longest compilation seen so far (COMPILE_GUESS before any)."""
    out = {m: {mode: {} for mode in modes} for m in models}
    sec_per_flop, compile_seen = None, None
    for mode in modes:
        for name in models:
            model = None
            for b in batches:
                work = flops[name] * b * (warmup + repeats)
                predicted = work * (sec_per_flop or 4.0 / (EFFICIENCY * 1e11))
                if mode == "compiled":
                    predicted += compile_seen or COMPILE_GUESS["quick" if quick else "full"]
                if deadline is not None and time.perf_counter() + predicted > deadline:
                    out[name][mode][str(b)] = {"skipped": f"predicted {predicted:.0f} s would pass the time budget"}
                    echo(f"{name:>13} {mode:>8} batch {b:>2}: skipped (predicted {predicted:.0f} s, time budget)")
                    continue
                if model is None:
                    model = build(name, quick, device, dtype)
                fn = model
                if mode == "compiled":
                    torch._dynamo.reset()  # a fresh cache per model and batch: no recompile limit reached
                    kwargs = {"dynamic": False}
                    if device.type == "cuda":
                        kwargs["mode"] = "reduce-overhead"
                    fn = torch.compile(model, **kwargs)
                kw = inputs(name, b, quick, device, dtype)
                with torch.inference_mode():
                    cell = time_calls(lambda: fn(**kw), device, warmup if mode == "eager" else max(warmup, 2), repeats)
                cell["seconds_per_image"] = cell["median_seconds"] / b
                if mode == "compiled":
                    compile_seen = max(compile_seen or 0.0, cell["first_call_seconds"] - cell["median_seconds"])
                rate = cell["median_seconds"] / (flops[name] * b)
                sec_per_flop = max(sec_per_flop or 0.0, rate)
                out[name][mode][str(b)] = cell
                echo(
                    f"{name:>13} {mode:>8} batch {b:>2}: {cell['seconds_per_image'] * 1e3:10.2f} ms/image "
                    f"({flops[name] * b / cell['median_seconds'] / 1e9:7.1f} GFLOP/s; first call "
                    f"{cell['first_call_seconds']:.2f} s)"
                )
            del model
            if mode == "compiled":
                torch._dynamo.reset()
    return out


# ----------------------------------------------------------------------------- shares and plans


def shares(levels: Sequence[str], flops: Dict[str, float], seconds: Dict[str, dict], modes, batches) -> dict:
    """Per ladder: each level's FLOP share and, per mode and batch where every level was timed, its seconds share
    (seconds per image over the ladder's sum) and the ratio of the two."""
    f = np.array([flops[m] for m in levels])
    res = {"levels": list(levels), "flop_share": (f / f.sum()).tolist(), "seconds_share": {}, "ratio": {}}
    for mode in modes:
        for b in batches:
            cells = [seconds[m][mode].get(str(b), {}) for m in levels]
            key = f"{mode}/{b}"
            if not all("seconds_per_image" in c for c in cells):
                res["seconds_share"][key] = None
                continue
            s = np.array([c["seconds_per_image"] for c in cells])
            res["seconds_share"][key] = (s / s.sum()).tolist()
            res["ratio"][key] = ((s / s.sum()) / (f / f.sum())).tolist()
    return res


def digits_deltas(n_levels: int, times: np.ndarray) -> np.ndarray:
    """The ASSUMED level differences delta_l(t) (n_calls, n_levels - 1): the shipped digits ladder's measured
    ones (state units per unit time), the top ``n_levels`` digits levels, interpolated at ``times`` in [0, 1]."""
    cal = Calibration.load(os.path.join(DIGITS_LADDER, "calibration.json"))
    K = cal.n_levels
    if not 2 <= n_levels <= K:
        raise ValueError(f"n_levels: expected 2..{K} (the digits ladder's levels), got {n_levels}")
    delta, _ = cal.corrections(tuple(range(K - n_levels, K)))
    t = cal.t0 + np.asarray(times) * (cal.t1 - cal.t0)
    return np.stack([np.interp(t, cal.times, delta[:, k]) for k in range(delta.shape[1])], 1)


def plan_comparison(levels: Sequence[str], flops: Dict[str, float], seconds: Sequence[float]) -> dict:
    """The closed-form plan made in FLOPs against the one made in seconds, at the same budgets in seconds.

    ``seconds``: the levels' measured seconds per image (one mode and batch). On CALLS calls of span h = 1 /
    CALLS, with delta_l(t) from :func:`digits_deltas`, for each budget B (a fraction of CALLS x the top's
    seconds, i.e. B top-level equivalents by the top model's seconds):

    * seconds plan: p from :class:`RateShape` with the costs in seconds (rates / sqrt(seconds), mu sized so the
      expected seconds are B);
    * FLOP plan: the same with the costs in FLOPs (what a plan in counted top-level equivalents does); its
      expected seconds are computed with the measured seconds;
    * FLOP-shaped rates fit to the seconds budget: the FLOP plan's shape (delta / sqrt(FLOPs)), mu sized with
      the measured seconds (isolates the shape from the overrun).

    Each: mean firing probability per correction, expected evaluations per level per image, expected seconds
    and added variance (:func:`added_variance`, relative to the seconds plan's; the units of delta cancel).
    """
    n = CALLS
    h = 1.0 / n
    times = (np.arange(n) + 0.5) * h
    spans = np.full(n, h)
    deltas = digits_deltas(len(levels), times)
    shape = RateShape(times, spans, deltas)
    f = np.array([flops[m] for m in levels], dtype=float)
    s = np.array(seconds, dtype=float)
    rows = []
    for frac in BUDGETS:
        budget = frac * n  # top-level equivalents per image: the seconds budget over the top's seconds per call
        row = {"budget_fraction_of_top": frac, "budget_seconds_per_image": float(budget * s[-1])}
        base_s, base_f = n * s[0] / s[-1], n * f[0] / f[-1]
        if not budget > max(base_s, base_f):
            row["skipped"] = (
                f"below the base level alone: {base_s:.3g} (seconds) / {base_f:.3g} (FLOPs) top-level equivalents"
            )
            rows.append(row)
            continue
        p_sec = shape.probabilities(s, budget)
        p_flop = shape.probabilities(f, budget)
        # The FLOP plan's rate shape, delta h / sqrt(C) with C in FLOPs (as RateShape forms it), mu by seconds.
        cf = f / f[-1]
        rh = deltas * spans[:, None] / np.sqrt(cf[1:] + cf[:-1])[None]
        _, p_fit = closed_form_probabilities(rh, s / s[-1], budget, precise=True)
        plans = {"seconds_plan": p_sec, "flop_plan": p_flop, "flop_shape_fit_to_seconds": p_fit}
        var = {k: float(added_variance(p[None], deltas, h, np.ones(n))[0]) for k, p in plans.items()}
        for key, p in plans.items():
            needed = np.concatenate([np.ones((n, 1)), 1.0 - idle_probabilities(p)], 1)  # level 0 always runs
            row[key] = {
                "mean_probabilities": p.mean(0).tolist(),
                "evaluations_per_image": needed.sum(0).tolist(),
                "expected_seconds_per_image": float(expected_cost(p, s)),
                "expected_top_equivalents_by_flops": float(expected_cost(p, f / f[-1])),
                "added_variance_over_seconds_plan": var[key] / var["seconds_plan"] if var["seconds_plan"] else None,
            }
        row["flop_plan_seconds_over_budget"] = (
            row["flop_plan"]["expected_seconds_per_image"] / row["budget_seconds_per_image"]
        )
        rows.append(row)
    return {
        "calls": n,
        "delta_model": "ASSUMED: the shipped digits ladder's measured delta_l(t) (calibration.json), mapped by "
        "level index from the top; random weights have no level differences of their own",
        "budgets": rows,
    }


# ----------------------------------------------------------------------------- the command


def _names(text: str, choices: Sequence[str], what: str) -> List[str]:
    vals = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in vals if v not in choices]
    if not vals or bad:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what} from {', '.join(choices)}, got {text!r}")
    return vals


def _batches(text: str) -> List[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        vals = []
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return sorted(set(vals))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlem bench real-ladders",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="tiny stand-ins of the same classes (seconds; the test)")
    p.add_argument(
        "--models",
        type=lambda t: _names(t, MODELS, "models"),
        default=list(MODELS),
        help=f"models to measure (default all: {','.join(MODELS)}); a ladder's shares need all its levels",
    )
    p.add_argument("--batches", type=_batches, default=list(BATCHES), help="batch sizes (default 1,8,32)")
    p.add_argument("--no-compile", action="store_true", help="eager timings only (no torch.compile)")
    p.add_argument("--device", default=None, help="torch device (default cpu; cuda runs in fp16)")
    p.add_argument(
        "--threads",
        type=threads_argument,
        default=1,
        help="CPU threads (default 1: steady on a shared machine; ignored on cuda)",
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1; 2+ when compiled)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per cell, their median reported (default 3)")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop starting cells predicted to end past this many seconds from the start (eager cells first); "
        "`mlem bench gpu` runs this benchmark with one inside its 8 minutes",
    )
    p.add_argument(
        "--out", default=None, help="JSON (default results/real_ladders.json; results/real_ladders_quick.json)"
    )
    add_overwrite_argument(p)
    return p


def run(args: argparse.Namespace, command: str, echo=print, t_start: Optional[float] = None) -> dict:
    """Measure, share and plan; returns the results (written by :func:`main`)."""
    t_start = time.perf_counter() if t_start is None else t_start
    device = torch.device(args.device or "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    modes = ["eager"] if args.no_compile else ["eager", "compiled"]
    models = [m for m in MODELS if m in args.models]
    batches = list(args.batches)
    flops = {m: count_flops(m, args.quick) for m in models}
    rate = gemm_rate(device, dtype)
    est = estimate(flops, models, batches, modes, args.warmup, args.repeats, rate, args.quick)
    echo(
        f"device {device} ({device_name(device)}), {dtype}, {torch.get_num_threads()} threads; latents "
        f"{QUICK_LATENT if args.quick else LATENT}x{QUICK_LATENT if args.quick else LATENT}; models "
        f"{', '.join(models)}; batches {batches}; {'/'.join(modes)}"
    )
    echo(
        f"estimate: ~{est['compute_seconds'] / 60:.1f} min of forward passes (FLOPs over {EFFICIENCY:g} x the "
        f"measured {rate / 1e9:.0f} GFLOP/s GEMM rate)"
        + (f" + ~{est['compile_seconds'] / 60:.0f} min of compilation (a guess)" if "compiled" in modes else "")
        + (f"; --time-budget {args.time_budget:g} s caps it" if args.time_budget else "")
    )
    deadline = None if args.time_budget is None else t_start + args.time_budget
    seconds = measure(
        models,
        batches,
        modes,
        quick=args.quick,
        device=device,
        dtype=dtype,
        warmup=args.warmup,
        repeats=args.repeats,
        flops=flops,
        deadline=deadline,
        echo=echo,
    )
    ladders, plans = {}, {}
    for key, levels in LADDERS.items():
        if not all(m in models for m in levels):
            continue
        ladders[key] = shares(levels, flops, seconds, modes, batches)
        plans[key] = {}
        for cell, share in ladders[key]["seconds_share"].items():
            if share is None:
                continue
            mode, b = cell.split("/")
            secs = [seconds[m][mode][b]["seconds_per_image"] for m in levels]
            plans[key][cell] = plan_comparison(levels, flops, secs)
    side = QUICK_LATENT if args.quick else LATENT
    return {
        "benchmark": "real_ladders",
        "command": command,
        "quick": bool(args.quick),
        "note": "tiny stand-in configs: the numbers mean nothing" if args.quick else None,
        "device": str(device),
        "device_name": device_name(device),
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "latent_size": [4, side, side],
        "image_size": None if args.quick else [256, 256],
        "conditioning": {
            "unet": f"encoder_hidden_states ({QUICK_TOKENS if args.quick else TOKENS}, cross_attention_dim), "
            "timestep 500",
            "dit": "class_labels, timestep 500",
        },
        "timing": {
            "statistic": "median of the timed repeats, divided by the batch size",
            "warmup": args.warmup,
            "warmup_compiled": max(args.warmup, 2),
            "repeats": args.repeats,
            "inference_mode": True,
            "compile": None
            if args.no_compile
            else {"mode": "reduce-overhead" if device.type == "cuda" else "default", "dynamic": False},
            "time_budget_seconds": args.time_budget,
        },
        "batches": batches,
        "modes": modes,
        "estimate": est,
        "models": {
            m: {
                "label": LABELS[m],
                "family": FAMILY[m],
                "config_source": SOURCES[m] + (" (quick stand-in: a few channels)" if args.quick else ""),
                "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config(m, args.quick).items()},
                "flops_per_image": flops[m],
                "seconds": seconds[m],
            }
            for m in models
        },
        "ladders": ladders,
        "plans": plans,
        "total_seconds": time.perf_counter() - t_start,
    }


def within(seconds: float, *, device, quick: bool = False, echo=print, command: Optional[str] = None) -> dict:
    """The benchmark's defaults (every model, batches 1, 8, 32, eager then compiled) inside ``seconds`` on
    ``device``: what ``mlem bench gpu`` runs and embeds in its results (nothing written here)."""
    argv = ["--device", str(device), "--time-budget", str(seconds)] + (["--quick"] if quick else [])
    args = build_parser().parse_args(argv)
    return run(args, command or shlex.join(["mlem", "bench", "real-ladders", *argv]), echo)


def main(argv=None, *, command: Optional[str] = None) -> dict:
    """``mlem bench real-ladders [ARGS]``: the argument list (default ``sys.argv[1:]``); ``command``: the command
    line recorded in the results (default: ``mlem bench real-ladders`` and the arguments)."""
    t_start = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser()
    args = p.parse_args(argv)
    out = args.out or default_outputs("real-ladders", args.quick)[0]
    check_outputs(p, [out], args.overwrite)
    if args.device is not None:
        try:
            dev = torch.device(args.device)
        except RuntimeError as e:
            p.error(f"--device: {e}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            p.error(f"--device {args.device}: CUDA is not available on this machine")
    for k in ("threads", "repeats"):
        if getattr(args, k) < 1:
            p.error(f"--{k}: expected an int >= 1, got {getattr(args, k)}")
    if args.warmup < 0 or (
        args.time_budget is not None and not (math.isfinite(args.time_budget) and args.time_budget > 0)
    ):
        p.error("--warmup: expected >= 0; --time-budget: expected a positive number of seconds")

    def echo(line: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f} s] {line}", flush=True)

    result = run(args, command or shlex.join(["mlem", "bench", "real-ladders", *argv]), echo, t_start)
    write_json(out, result, indent=1)
    for line in summary_lines(result):
        echo(line)
    echo(f"wrote {out}")
    return result


def summary_lines(result: dict) -> List[str]:
    """The shares and the plan comparison, one line each, for the log."""
    lines = []
    for key, lad in result["ladders"].items():
        names = [LABELS[m] for m in lad["levels"]]
        lines.append(f"{key}: FLOP share " + ", ".join(f"{n} {s:.3f}" for n, s in zip(names, lad["flop_share"])))
        for cell, sh in lad["seconds_share"].items():
            if sh is not None:
                lines.append(f"{key} {cell}: seconds share " + ", ".join(f"{s:.3f}" for s in sh))
        for cell, plan in result["plans"].get(key, {}).items():
            for row in plan["budgets"]:
                if "skipped" in row:
                    continue
                lines.append(
                    f"{key} {cell} budget {row['budget_fraction_of_top']:g} x top: FLOP plan costs "
                    f"{row['flop_plan_seconds_over_budget']:.3f} x the budget in seconds; p(seconds) "
                    + ", ".join(f"{v:.3f}" for v in row["seconds_plan"]["mean_probabilities"])
                    + " vs p(FLOPs) "
                    + ", ".join(f"{v:.3f}" for v in row["flop_plan"]["mean_probabilities"])
                )
    return lines


if __name__ == "__main__":
    main()

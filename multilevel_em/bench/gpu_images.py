"""On a GPU: train a bigger UNet ladder and compare EM, DPM-Solver++ and ML-EM at equal cost, in < 8 minutes.

Steps (all on --device, default cuda when available):

1. Data: scikit-learn's digits bilinearly upsampled to --size (default 32x32; nothing is downloaded),
   or --data FOLDER of PNG/JPEG images resized to --size (32 or 64), read by multilevel_em's load_dataset.
2. Ladder: UNets of base widths --widths (default 16,32,64,128; the project's UNetLadder makes width w a
   UNet2DModel with block_out_channels = (w, 2w, 2w), so the top level's blocks are 128, 256, 256 channels
   wide; 0.12, 0.49, 1.9 and 7.8 GFLOPs per sample at 32x32), trained by multilevel_em.images.train_ladder.
   The training budget --train-seconds is split as EQUAL ITERATIONS PER LEVEL (so the time per level is
   proportional to its cost per iteration): every level first trains --probe-iters iterations, timed;
   the iteration count that fills the rest of the budget follows from the measured seconds per iteration,
   and training resumes up to it (train_ladder's resume ends with the same weights as one long run).
   --iters N fixes the count instead.
3. Calibration: MultilevelPipeline.calibrate (--cal-n states, --cal-steps EM steps); gamma +- se.
4. Sampling, every run from the same --n initial noises: EM with the top level at --em-steps steps,
   DPM-Solver++(2M) at --dpm-steps, ML-EM at --mlem-budgets top-level equivalents per sample (levels,
   steps and rates planned by the calibration); "equal cost": each ML-EM budget is also an EM step count.
   Per run: counted cost (top-level equivalents per sample), wall-clock seconds per sample on the device
   (torch.cuda.synchronize before and after), quality. On a GPU ML-EM's sub-batches are padded to
   multiples of --pad samples (32) so that cuDNN sees few shapes (a new shape costs ~1 ms per conv on first
   use); the padding is computed but not counted, so ML-EM's wall-clock is if anything pessimistic.
   Before the sweep the time is predicted from timed level evaluations; if it would not end by
   --deadline-seconds after the start, --n is reduced (recorded), and a run that would overrun is skipped.
5. Quality: digits: KID (unbiased, cubic kernel) on the features of the project's digit classifier, with
   samples and reference area-downsampled to the classifier's 16x16, and pixel sliced Wasserstein (SW).
   A folder: pixel SW only (the classifier knows only digits) against up to --ref-max images. Standard
   errors from 8 disjoint chunks; differences between runs by paired chunk-wise SEs (bench.images).

0. Real ladders (first, --real-ladders-seconds, default 120 s; 0 skips it): ``mlem bench real-ladders`` on the
   same device inside that time budget (multilevel_em/bench/real_ladders.py: SD 1.4 + BK-SDM and DiT S/B/XL
   from their configs, random weights, fp16; seconds per image at batches 1, 8, 32, eager cells first, then
   torch.compile with mode="reduce-overhead" while the budget lasts), embedded under "real_ladders".

Writes --out (JSON, atomically; default results/gpu_images.json, results/gpu_images_quick.json with --quick)
and a cost-quality plot with sample grids (--plot, default the JSON path with .png).

Time on one H100 with the defaults, an ESTIMATE from FLOP counts (not measured):
training 3 x 10.3 GFLOPs x 128 = 4.0 TFLOPs per iteration of all four levels; at ~100 TFLOP/s (TF32
convolutions) plus ~10 ms of kernel-launch overhead per level, ~80 ms, i.e. ~12 iterations/s, ~3000
iterations per level in 280 s (200 s by default since the real ladders take 120 s of the 8 minutes: ~2100
iterations). Sampling ~1400 top-level equivalents x 512 samples x 7.8 GFLOPs = 5.6 PFLOPs,
~60-90 s. With start-up, the real ladders and calibration, ~7.5 of the 8 minutes (the sweep's --n shrinks
to keep the deadline). At --size 64 every UNet costs 4x as much:
training gets ~4x fewer iterations and the deadline shrinks --n (or pass --widths 8,16,32,64).

Usage::

    mlem bench gpu                                  # digits at 32x32, on cuda
    mlem bench gpu --data FOLDER --size 64          # your images (RGB)
    mlem bench gpu --quick --out /tmp/q.json        # tiny CPU run, < 60 s
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

import torch
from safetensors import safe_open

from .._io import atomic_write, write_json
from ..diffusion import DiffusersUNetAdapter, MultilevelDenoiser, sample
from ..diffusion.metrics import sliced_wasserstein
from ..engine import bucketed
from ..images.data import IMAGE_SUFFIXES, load_dataset
from ..images.ladder import (
    build_unet,
    load_ladder,
    unet_flops,
)
from ..images.metrics import image_metrics, load_digit_classifier
from ..images.pipeline import (
    T_MIN,
    MultilevelPipeline,
    ReverseTimeRate,
    image_grid,
    to_numpy_images,
)
from ..images.train import TRAIN_STATE, train_ladder
from . import real_ladders
from .chunks import CHUNKS, chunk_kids, chunk_summary, sample_sd
from .common import device_name, single_thread, sync_device
from .outputs import add_overwrite_argument, check_outputs, default_outputs

#: Defaults of the full run (one GPU, < 8 minutes) and of --quick (a tiny CPU run, < 60 s).
FULL = {
    "size": 32,
    "widths": (16, 32, 64, 128),
    "norm_groups": 8,
    "batch": 128,
    "train_seconds": 200.0,
    "probe_iters": 20,
    "cal_n": 32,
    "cal_steps": 144,
    "n": 512,
    "em_steps": (500, 250, 100, 50, 25),
    "dpm_steps": (20, 10),
    "mlem_budgets": (250, 100, 50, 25),
    "deadline_seconds": 450.0,
    "real_ladders_seconds": 120.0,
}
QUICK = {
    "size": 16,
    "widths": (4, 8, 12, 16),
    "norm_groups": 4,
    "batch": 16,
    "train_seconds": 4.0,
    "probe_iters": 3,
    "cal_n": 8,
    "cal_steps": 36,
    "n": 16,
    "em_steps": (20, 10),
    "dpm_steps": (10,),
    "mlem_budgets": (10, 5),
    "deadline_seconds": 600.0,
    "real_ladders_seconds": 12.0,
    "device": "cpu",
}
RESERVE = 20.0  # seconds kept for scoring, the plot and the JSON after the last run
CLASSIFIER_SIZE = 16  # the digit classifier's input size


def _now() -> float:
    return time.perf_counter()


# ----------------------------------------------------------------------------- arguments


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return vals


def _float_list(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals or any(not (math.isfinite(v) and v > 0) for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive numbers, got {text!r}")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        prog="mlem bench gpu",
    )
    q = "default {} ({} with --quick)"

    def d(key, fmt=str):
        val = FULL[key]
        qv = QUICK[key]
        show = (lambda v: ",".join(map(str, v))) if isinstance(val, tuple) else fmt
        return q.format(show(val), show(qv))

    p.add_argument(
        "--quick",
        action="store_true",
        help="a tiny CPU run (16x16, tiny widths, few iterations and "
        "samples, < 60 s): checks the script end to end; its numbers mean nothing",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="FOLDER",
        help="a folder of PNG/JPEG images (default: scikit-learn's digits, nothing downloaded)",
    )
    p.add_argument("--size", type=int, default=None, choices=(16, 32, 64), help="image side in pixels, " + d("size"))
    p.add_argument(
        "--channels",
        type=int,
        default=3,
        choices=(1, 3),
        help="for --data: 1 (grayscale) or 3 (RGB, default); the digits are grayscale",
    )
    p.add_argument(
        "--widths",
        type=_int_list,
        default=None,
        help="base widths, strictly increasing, multiples of --norm-groups (block_out_channels = "
        "(w, 2w, 2w)), " + d("widths"),
    )
    p.add_argument("--norm-groups", type=int, default=None, help="GroupNorm groups, " + d("norm_groups"))
    p.add_argument(
        "--device", default=None, help="torch device (default: cuda if available, else cpu; cpu with --quick)"
    )
    p.add_argument(
        "--train-seconds",
        type=float,
        default=None,
        help="training budget in seconds, split as equal iterations per level, " + d("train_seconds"),
    )
    p.add_argument(
        "--probe-iters",
        type=int,
        default=None,
        help="iterations per level timed to size the budget, " + d("probe_iters"),
    )
    p.add_argument("--iters", type=int, default=None, help="fixed iterations per level (ignores --train-seconds)")
    p.add_argument("--batch", type=int, default=None, help="training batch, " + d("batch"))
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--ema", type=float, default=0.995, help="EMA decay of the sampling weights (default 0.995)")
    p.add_argument("--seed", type=int, default=0, help="seeds training, calibration and sampling (default 0)")
    p.add_argument("--cal-n", type=int, default=None, help="calibration states, " + d("cal_n"))
    p.add_argument("--cal-steps", type=int, default=None, help="calibration EM steps, " + d("cal_steps"))
    p.add_argument(
        "--n", type=int, default=None, help="samples per run, a multiple of 16 (8 chunks of 2 or more), " + d("n")
    )
    p.add_argument("--em-steps", type=_int_list, default=None, help="EM-top step counts, " + d("em_steps"))
    p.add_argument("--dpm-steps", type=_int_list, default=None, help="DPM-Solver++(2M) step counts, " + d("dpm_steps"))
    p.add_argument(
        "--mlem-budgets",
        type=_float_list,
        default=None,
        help="ML-EM budgets, top-level equivalents per sample, " + d("mlem_budgets"),
    )
    p.add_argument(
        "--pad",
        type=int,
        default=None,
        help="pad ML-EM sub-batches to multiples of this many samples (default 32 on a GPU, 1 = none on the CPU)",
    )
    p.add_argument(
        "--deadline-seconds",
        type=float,
        default=None,
        help="the whole script's time limit, met by shrinking --n or skipping runs, " + d("deadline_seconds"),
    )
    p.add_argument(
        "--real-ladders-seconds",
        type=float,
        default=None,
        help="time budget of the real-ladders timings run first (0 skips them), " + d("real_ladders_seconds"),
    )
    p.add_argument(
        "--ref-max", type=int, default=2000, help="for --data: at most this many reference images for SW (default 2000)"
    )
    p.add_argument(
        "--ladder-dir",
        default=None,
        help="keep the trained ladder (+ calibration) in this new folder "
        "(default: a temporary folder, deleted at the end)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="JSON output (default results/gpu_images.json; results/gpu_images_quick.json with --quick)",
    )
    p.add_argument("--plot", default=None, help="cost-quality plot PNG (default: --out with .png)")
    add_overwrite_argument(p)
    return p


def resolve(args: argparse.Namespace, p: argparse.ArgumentParser) -> dict:
    """The settings: explicit arguments, else --quick's or the full run's defaults; p.error on bad input."""
    base = QUICK if args.quick else FULL
    s = {k: (getattr(args, k) if getattr(args, k, None) is not None else v) for k, v in base.items()}
    for k in ("widths", "em_steps", "dpm_steps"):
        s[k] = [int(v) for v in s[k]]
    s["mlem_budgets"] = [float(v) for v in s["mlem_budgets"]]
    device = args.device or base.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        p.error(f"--device: {e}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {device}: CUDA is not available on this machine (use --device cpu, or --quick)")
    s["device"] = str(dev)
    s["pad"] = args.pad if args.pad is not None else (32 if dev.type == "cuda" else 1)
    if args.data is not None:
        if not os.path.isdir(args.data):
            p.error(
                f"--data: {args.data!r} is not a folder (give a folder of PNG/JPEG images, or omit --data "
                "for the digits)"
            )
        if not any(f.lower().endswith(IMAGE_SUFFIXES) for _, _, names in os.walk(args.data) for f in names):
            p.error(f"--data: no PNG/JPEG file in {args.data!r}")
    widths, groups = s["widths"], s["norm_groups"]
    if len(widths) < 2:
        p.error(f"--widths: ML-EM needs at least 2 levels, got {widths}")
    if any(b <= a for a, b in itertools.pairwise(widths)):
        p.error(f"--widths: expected strictly increasing widths, cheapest first, got {widths}")
    if groups < 1 or any(w % groups for w in widths):
        p.error(f"--widths: every width must be a multiple of --norm-groups={groups}, got {widths}")
    for k, lo in (("batch", 1), ("probe_iters", 2), ("cal_n", 8), ("cal_steps", 12), ("pad", 1), ("ref_max", 16)):
        v = s[k] if k in s else getattr(args, k)
        if v < lo:
            p.error(f"--{k.replace('_', '-')}: expected an int >= {lo}, got {v}")
    if s["n"] < 2 * CHUNKS or s["n"] % (2 * CHUNKS):
        p.error(
            f"--n: expected a multiple of {2 * CHUNKS} (>= {2 * CHUNKS}: {CHUNKS} chunks of 2 or more), got {s['n']}"
        )
    if args.iters is not None and args.iters < 1:
        p.error(f"--iters: expected an int >= 1, got {args.iters}")
    if not s["real_ladders_seconds"] >= 0:
        p.error("--real-ladders-seconds: expected a number of seconds >= 0 (0 skips the real ladders)")
    if not s["train_seconds"] > 0 or not s["deadline_seconds"] > 0:
        p.error("--train-seconds, --deadline-seconds: expected positive numbers")
    if not (args.lr > 0 and math.isfinite(args.lr)) or not (0 <= args.ema < 1):
        p.error(f"--lr, --ema: expected lr > 0 and 0 <= ema < 1, got {args.lr}, {args.ema}")
    if args.ladder_dir and os.path.exists(args.ladder_dir) and os.listdir(args.ladder_dir):
        p.error(f"--ladder-dir: {args.ladder_dir!r} exists and is not empty; give a new folder")
    if args.data is None and args.channels != 3:
        p.error("--channels: only for --data (the digits are grayscale)")
    s.update(
        data=args.data or "digits",
        channels=(None if args.data is None else args.channels),
        iters=args.iters,
        batch=s["batch"],
        lr=args.lr,
        ema=args.ema,
        seed=args.seed,
        ref_max=args.ref_max,
        quick=args.quick,
        ladder_dir=args.ladder_dir,
    )
    return s


# ----------------------------------------------------------------------------- training


def train(data, directory: str, s: dict, device: torch.device, command: str, echo) -> dict:
    """Probe, then train to the iteration count that fills the budget (equal iterations per level)."""
    widths = s["widths"]
    K = len(widths)
    kw = {
        "widths": widths,
        "seed": s["seed"],
        "batch": s["batch"],
        "lr": s["lr"],
        "ema_decay": s["ema"],
        "norm_groups": s["norm_groups"],
        "save_every": 10**9,
        "command": command,
        "device": device,
    }
    stamps: list[float] = []

    def progress(k: int) -> None:
        if k:
            stamps.append(_now())

    def per_level(phase: list[float], iters: int) -> list[list[float]]:
        return [phase[i * iters : (i + 1) * iters] for i in range(K)]

    probe = s["probe_iters"] if s["iters"] is None else s["iters"]
    start = _now()
    train_ladder(data, directory, iters=probe, progress=progress, loss_plot=False, **kw)
    probe_wall = _now() - start
    probe_levels = per_level(stamps, probe)
    sec_per_iter = []
    for lv in probe_levels:
        diffs = [b - a for a, b in itertools.pairwise(lv)]  # the first iteration (warm-up) is not among them
        sec_per_iter.append(statistics.median(diffs[len(diffs) // 3 :]) if diffs else probe_wall / (K * probe))
    overhead = max(0.0, probe_wall - sum((probe - 1) * t for t in sec_per_iter))
    if s["iters"] is not None:
        iters, rule = s["iters"], f"fixed: {s['iters']} iterations per level (--iters)"
    else:
        left = s["train_seconds"] - probe_wall - overhead  # the second call has about the probe's overhead
        iters = probe + max(0, int(left / sum(sec_per_iter)))
        rule = (
            f"equal iterations per level; {probe} probe iterations per level timed, then "
            f"{iters} = {probe} + floor((budget {s['train_seconds']:g} s - probe {probe_wall:.1f} s - "
            f"overhead {overhead:.1f} s) / {sum(sec_per_iter):.4f} s per iteration of all levels)"
        )
    echo(
        f"train: probe {probe} iterations per level in {probe_wall:.1f} s; seconds per iteration "
        + ", ".join(f"w{w}: {t * 1e3:.1f} ms" for w, t in zip(widths, sec_per_iter))
        + f"; -> {iters} iterations"
    )
    main_levels: list[list[float]] = [[] for _ in range(K)]
    main_wall = 0.0
    if iters > probe:
        del stamps[:]
        start = _now()
        train_ladder(data, directory, iters=iters, progress=progress, loss_plot=True, **kw)
        main_wall = _now() - start
        main_levels = per_level(stamps, iters - probe)
    level_seconds = []
    for k in range(K):
        secs = 0.0
        for lv in (probe_levels[k], main_levels[k]):
            if lv:
                secs += lv[-1] - lv[0] + sec_per_iter[k]  # the first iteration's length is not stamped: add one
        level_seconds.append(secs)
    final_loss = []
    for k in range(K):
        with safe_open(os.path.join(directory, f"level_{k + 1}", TRAIN_STATE + ".safetensors"), "pt") as f:
            losses = f.get_tensor("losses")  # not the weights and optimizer state
        m = max(1, len(losses) // 10)
        final_loss.append(float(losses[-m:].mean()))
    echo(
        f"train: {iters} iterations per level in {probe_wall + main_wall:.1f} s (budget {s['train_seconds']:g} s); "
        "final loss (mean of last 10%) " + ", ".join(f"{v:.4f}" for v in final_loss)
    )
    return {
        "split": rule,
        "iters_per_level": iters,
        "probe_iters": probe,
        "batch": s["batch"],
        "seconds_per_iteration": sec_per_iter,
        "train_seconds_per_level": level_seconds,
        "train_wall_seconds": probe_wall + main_wall,
        "budget_seconds": s["train_seconds"],
        "call_overhead_seconds": overhead,
        "final_loss": final_loss,
    }


# ----------------------------------------------------------------------------- sampling on the device


class DevicePipeline(MultilevelPipeline):
    """``MultilevelPipeline`` on a device, with :meth:`run`: samples as ``pipe(...)`` does, with the same seeds,
    through UNets padded to a few batch shapes, timed between two device synchronisations."""

    def __init__(self, ladder, device, pad: int = 1, calibration=None):
        super().__init__(ladder, calibration)
        self.pad = int(pad)
        self.to(device)

    def models(self, n: int, padded: bool = True) -> list:
        """The levels as eps models for batches of up to ``n`` samples; with ``pad`` > 1 each batch is padded to a
        multiple of ``pad`` (:func:`~multilevel_em.engine.bucketed`, buckets pad, 2 pad, ... up to n)."""
        pad = self.pad if padded else 1
        levels = [DiffusersUNetAdapter(u, self.ladder.schedule) for u in self.ladder.unets]
        if pad == 1:
            return levels
        sizes = range(pad, pad * -(-n // pad) + 1, pad)
        return [bucketed(m, sizes) for m in levels]

    def run(self, n: int, method: str, *, steps: int | None = None, budget: float | None = None, seed: int = 0):
        """(samples on the device, report) of ``n`` samples; the report as ``pipe(...).report``, its
        ``wall_seconds`` measured between two ``torch.cuda.synchronize`` on a GPU."""
        L = self.ladder
        generator = torch.Generator().manual_seed(seed)
        s = int(torch.randint(0, 2**62, (1,), generator=generator))  # as MultilevelPipeline.__call__
        g_noise, g_draws = torch.Generator().manual_seed(s), torch.Generator().manual_seed(s + 1)
        x_T = torch.randn((n, *L.shape), generator=g_noise).to(self.device)
        models, plan = self.models(n), None
        if method == "mlem":
            plan = self.sampling_plan(budget, steps, "em")
            levels, sampler, steps = list(plan.levels), "em", plan.steps
            rates = [ReverseTimeRate(r, L.schedule.t_max) for r in plan.rates]
            denoiser = MultilevelDenoiser(
                [models[i] for i in levels],
                costs=[L.costs[i] for i in levels],
                rates=rates,
                draws="per_sample",
                generator=g_draws,
                schedule=L.schedule,
                names=[L.names[i] for i in levels],
            )
        elif method in ("em", "dpmpp_2m"):
            levels, sampler = [len(L) - 1], method
            denoiser = MultilevelDenoiser([models[-1]], costs=[L.costs[-1]], schedule=L.schedule, names=L.names[-1:])
        else:
            raise ValueError(f"method: expected 'em', 'dpmpp_2m' or 'mlem', got {method!r}")
        opts = {"t_min": T_MIN} if sampler == "em" else {}
        sync_device(self.device)
        start = _now()
        out = sample(denoiser, x_T, schedule=L.schedule, steps=int(steps), sampler=sampler, generator=g_noise, **opts)
        sync_device(self.device)
        wall = _now() - start
        return out.x, self._report(method, sampler, out, levels, wall, n, plan, budget)


def time_levels(pipe: DevicePipeline, n: int, repeats: int) -> dict[int, list[float]]:
    """Warm every level up at every padded batch size up to n; seconds of one evaluation at batch n and pad."""
    dev, pad = pipe.device, pipe.pad
    sizes = sorted({n} | set(range(pad, n + 1, pad))) if pad > 1 else [n]
    g = torch.Generator().manual_seed(1)
    x = torch.randn((n, *pipe.ladder.shape), generator=g).to(dev)
    out: dict[int, list[float]] = {n: [], pad: []}
    with torch.no_grad():
        for m in pipe.models(n):
            for b in sizes:
                m(x[:b], 0.5)
            for b, times in out.items():
                ts = []
                for _ in range(repeats):
                    sync_device(dev)
                    t0 = _now()
                    m(x[:b], 0.5)
                    sync_device(dev)
                    ts.append(_now() - t0)
                times.append(statistics.median(ts))
    return out


def _priority(settings: list[dict]) -> list[int]:
    """Order of execution: EM with the most steps (the reference), ML-EM, EM at ML-EM's budgets (equal cost),
    DPM-Solver++, the other EM runs."""
    em = [i for i, st in enumerate(settings) if st["method"] == "em"]
    mlem = [i for i, st in enumerate(settings) if st["method"] == "mlem"]
    budgets = {settings[i]["budget"] for i in mlem}
    first = em[:1] + mlem + [i for i in em[1:] if settings[i]["steps"] in budgets]
    rest = [i for i, st in enumerate(settings) if st["method"] == "dpmpp_2m"] + [i for i in em if i not in first]
    return first + rest


def predict_seconds(pipe: DevicePipeline, setting: dict, t: dict[int, list[float]], n: int, n_timed: int) -> float:
    """Predicted wall-clock of one run at n samples (level times measured at n_timed, scaled by n / n_timed)."""
    scale = n / n_timed
    t_n = [v * scale for v in t[n_timed]]
    t_pad = t[min(t)]
    if setting["method"] != "mlem":
        return setting["steps"] * t_n[-1] * 1.1
    try:
        plan = pipe.sampling_plan(setting["budget"], setting.get("steps"), "em")
    except ValueError:
        return 0.0  # the run will fail the same way, and say why
    lv = list(plan.levels)
    c = pipe.ladder.costs
    base = plan.steps * t_n[lv[0]]
    corrections = max(0.0, plan.top_equivalents - plan.steps * c[lv[0]] / c[-1]) * t_n[-1]
    floors = plan.steps * sum(t_pad[a] + t_pad[b] for a, b in itertools.pairwise(lv))  # a correction per step at worst
    return 1.1 * (base + corrections + floors)


# ----------------------------------------------------------------------------- quality


class _Features(torch.nn.Module):
    """The digit classifier's features of images of any size (area-resampled to 16x16 first)."""

    def __init__(self, clf):
        super().__init__()
        self.clf = clf

    def features(self, x):
        if x.shape[-1] != CLASSIFIER_SIZE:
            x = torch.nn.functional.interpolate(x, size=(CLASSIFIER_SIZE, CLASSIFIER_SIZE), mode="area")
        return self.clf.features(x)


class Scorer:
    def __init__(self, data, s: dict, device: torch.device):
        self.digits = s["data"] == "digits"
        self.seed = s["seed"]
        ref = data.x
        if not self.digits and len(ref) > s["ref_max"]:
            idx = torch.randperm(len(ref), generator=torch.Generator().manual_seed(s["seed"]))[: s["ref_max"]]
            ref = ref[idx]
        self.ref = ref
        self.ref_dev = ref.to(device)
        if self.digits:
            self.clf = _Features(load_digit_classifier())
            with torch.no_grad():
                self.ref_feats = self.clf.features(ref)
            self.metric, self.key = "KID", "kid"
            self.description = (
                f"KID: unbiased MMD^2, cubic polynomial kernel, on the 64-d features of the project's "
                f"digit classifier (samples and all {len(ref)} digits area-resampled to 16x16); "
                f"kid_se from {CHUNKS} disjoint chunks. Also pixel sliced Wasserstein (256 "
                "projections) at full size"
            )
        else:
            self.metric, self.key = "SW", "sliced_wasserstein"
            self.description = (
                f"pixel sliced Wasserstein (256 projections) against {len(ref)} images of the folder; "
                f"sliced_wasserstein_se from {CHUNKS} disjoint chunks (each chunk's SW is biased up by "
                "its small size; only differences between runs are meaningful). The digit "
                "classifier's KID does not apply to other images"
            )

    def _sw(self, x) -> float:
        return sliced_wasserstein(x, self.ref_dev, projections=256, generator=torch.Generator().manual_seed(self.seed))

    def __call__(self, x: torch.Tensor) -> dict:
        x = x.detach().float().clamp(-1, 1)
        if self.digits:
            xc = x.cpu()
            m = image_metrics(xc, self.ref, self.clf, seed=self.seed)
            chunks = chunk_kids(self.clf, xc, self.ref_feats)
            return {
                "kid": m["kid"],
                "kid_chunks": chunks,
                "kid_se": sample_sd(chunks) / math.sqrt(len(chunks)),
                "sliced_wasserstein": m["sliced_wasserstein"],
            }
        chunks = [self._sw(c) for c in torch.tensor_split(x.to(self.ref_dev.device), CHUNKS)]
        return {
            "sliced_wasserstein": self._sw(x.to(self.ref_dev.device)),
            "sliced_wasserstein_chunks": chunks,
            "sliced_wasserstein_se": sample_sd(chunks) / math.sqrt(len(chunks)),
        }


def summarize(runs: list[dict], scorer: Scorer) -> dict:
    """bench.images' summary (cheapest run of each method within 2 paired se of EM with the most steps) on the
    primary metric, and ML-EM against EM at the same cost."""
    key = scorer.key
    done = [r for r in runs if "skipped" not in r]
    shadow = [dict(r, kid=r[key], kid_se=r[key + "_se"], kid_chunks=r[key + "_chunks"]) for r in done]
    summary = chunk_summary(shadow) if shadow else {"lines": []}
    for r, sh in zip(done, shadow):
        if "kid_diff" in sh:
            r[key + "_diff"], r[key + "_diff_se"] = sh["kid_diff"], sh["kid_diff_se"]
    methods = {r["method"] for r in done}
    lines = [
        ln.replace("KID", scorer.metric)
        for ln in summary.pop("lines")
        if ln.startswith("reference") or ln.split(":")[0] in methods
    ]
    summary = {k: v for k, v in summary.items() if k == "reference" or k in methods}
    equal = []
    for r in done:
        if r["method"] != "mlem":
            continue
        em = [e for e in done if e["method"] == "em" and abs(e["steps"] - r["budget"]) < 1e-9]
        if not em:
            continue
        e = em[0]
        diffs = [a - b for a, b in zip(r[key + "_chunks"], e[key + "_chunks"])]
        row = {
            "budget": r["budget"],
            "em_steps": e["steps"],
            "mlem_top_equivalents": r["top_equivalents"],
            "em_top_equivalents": e["top_equivalents"],
            f"mlem_{key}": r[key],
            f"em_{key}": e[key],
            "diff": r[key] - e[key],
            "diff_se": sample_sd(diffs) / math.sqrt(len(diffs)),
            "wall_ratio_mlem_over_em": r["wall_seconds_per_sample"] / e["wall_seconds_per_sample"],
        }
        equal.append(row)
        lines.append(
            f"equal cost {r['budget']:g}: ML-EM {scorer.metric} {r[key]:.4g} vs EM {e[key]:.4g} (diff "
            f"{row['diff']:+.3g} +- {row['diff_se']:.2g} paired se), counted cost "
            f"{r['top_equivalents']:.1f} vs "
            f"{e['top_equivalents']:.0f}, wall-clock ML-EM/EM {row['wall_ratio_mlem_over_em']:.2f}"
        )
    return {"metric": scorer.metric, **summary, "equal_cost": equal, "lines": lines}


# ----------------------------------------------------------------------------- plot


def plot(path: str, result: dict, grids: dict[str, torch.Tensor]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "kid" if result["metric"]["name"] == "KID" else "sliced_wasserstein"
    runs = [r for r in result["runs"] if "skipped" not in r]
    fig, axes = plt.subplots(
        1,
        2 + len(grids),
        figsize=(5 * (2 + len(grids)), 4.2),
        gridspec_kw={"width_ratios": [1.3, 1.3] + [1] * len(grids)},
    )
    styles = {
        "em": ("EM (top level)", "o-", "C0"),
        "dpmpp_2m": ("DPM-Solver++(2M)", "s-", "C1"),
        "mlem": ("ML-EM", "D-", "C3"),
    }
    for ax, xkey, xlabel in (
        (axes[0], "top_equivalents", "cost: top-level equivalents per sample"),
        (axes[1], "wall_ms_per_sample", f"wall-clock ms per sample ({result['device_name']})"),
    ):
        for method, (label, fmt, color) in styles.items():
            rs = sorted((r for r in runs if r["method"] == method), key=lambda r: r["top_equivalents"])
            if not rs:
                continue
            xs = [r["top_equivalents"] if xkey == "top_equivalents" else 1e3 * r["wall_seconds_per_sample"] for r in rs]
            ax.errorbar(
                xs,
                [r[key] for r in rs],
                yerr=[r[key + "_se"] for r in rs],
                fmt=fmt,
                color=color,
                label=label,
                capsize=3,
                ms=5,
            )
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{result['metric']['name']} (lower is better)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend()
    cal = result["calibration"]
    gamma = "n/a" if cal["gamma"] is None else f"{cal['gamma']:.2f} +- {cal['gamma_se'] or float('nan'):.2f}"
    axes[0].set_title(f"widths {result['ladder']['widths']}, gamma = {gamma}")
    axes[1].set_title(f"n = {result['n']} samples per run")
    for ax, (title, x) in zip(axes[2:], grids.items()):
        imgs = to_numpy_images(x[:64].cpu())
        grid = image_grid(imgs, ncols=8)
        ax.imshow(grid, cmap="gray" if imgs.shape[-1] == 1 else None)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- main


def run(
    s: dict, argv: list[str], out: str, plot_path: str, t_start: float, echo=print, command: str | None = None
) -> dict:
    command = command or shlex.join(["mlem", "bench", "gpu", *argv])
    device = torch.device(s["device"])
    deadline = t_start + s["deadline_seconds"]
    phases: dict[str, float] = {}
    torch.manual_seed(s["seed"])
    t = _now()
    if device.type == "cuda":  # start CUDA now, not inside the timed training probe
        torch.zeros(1, device=device)
        sync_device(device)
    data = load_dataset(s["data"], size=s["size"], channels=s["channels"])
    echo("data: " + data.report())
    shapes = {
        "sample_size": data.size,
        "channels": data.channels,
        "layers_per_block": 1,
        "norm_groups": s["norm_groups"],
    }
    unets = [build_unet(w, **shapes) for w in s["widths"]]
    flops = [unet_flops(u, data.size, data.channels) for u in unets]
    params = [sum(p.numel() for p in u.parameters()) for u in unets]
    del unets
    cheapest = flops[0] / flops[-1]
    if min(s["mlem_budgets"]) < cheapest:
        raise SystemExit(
            f"--mlem-budgets: {min(s['mlem_budgets']):g} is below one step of the cheapest level "
            f"({cheapest:.3g} top-level equivalents)"
        )
    echo(
        "ladder: widths "
        + ", ".join(f"{w} ({f / 1e9:.3f} GFLOPs, {p / 1e6:.2f}M params)" for w, f, p in zip(s["widths"], flops, params))
    )
    phases["setup"] = _now() - t

    real = None
    if s["real_ladders_seconds"] > 0:
        t = _now()
        echo(f"real ladders: mlem bench real-ladders within {s['real_ladders_seconds']:g} s")
        real = real_ladders.within(s["real_ladders_seconds"], device=device, quick=s["quick"], echo=echo)
        phases["real_ladders"] = _now() - t

    tmp = None
    directory = s["ladder_dir"]
    if directory is None:
        tmp = tempfile.mkdtemp(prefix="gpu_images_ladder_")
        directory = os.path.join(tmp, "ladder")
    try:
        t = _now()
        training = train(data, directory, s, device, command, echo)
        phases["train"] = _now() - t

        t = _now()
        pipe = DevicePipeline(load_ladder(directory), device, pad=s["pad"])
        cal = pipe.calibrate(n=s["cal_n"], steps=s["cal_steps"], generator=torch.Generator().manual_seed(s["seed"]))
        if s["ladder_dir"]:
            pipe.save_calibration(directory)
        phases["calibrate"] = _now() - t
        gamma_se = None if cal.gamma_se is None or not math.isfinite(cal.gamma_se) else float(cal.gamma_se)
        gamma = None if cal.gamma is None else float(cal.gamma)
        echo(
            f"calibrate: gamma = {gamma} +- {gamma_se}, EM step error a = {cal.step_error:.4g}, "
            f"in {phases['calibrate']:.1f} s"
        )

        t = _now()
        settings = (
            [{"method": "em", "steps": k} for k in sorted(s["em_steps"], reverse=True)]
            + [{"method": "dpmpp_2m", "steps": k} for k in sorted(s["dpm_steps"], reverse=True)]
            + [{"method": "mlem", "budget": b} for b in sorted(s["mlem_budgets"], reverse=True)]
        )
        n_req, n = s["n"], s["n"]
        with torch.no_grad():
            level_t = time_levels(pipe, n, repeats=3)
            pipe.run(n, "em", steps=2, seed=s["seed"] + 1)  # warm-up of the samplers
            pipe.run(n, "dpmpp_2m", steps=2, seed=s["seed"] + 1)
        predicted = [predict_seconds(pipe, st, level_t, n, n) for st in settings]
        available = deadline - _now() - RESERVE
        if sum(predicted) > available:
            step = math.lcm(2 * CHUNKS, s["pad"])  # 8 chunks of 2 or more; no padding at full batch
            n = max(step, int(n * available / sum(predicted)) // step * step)
            echo(f"sweep: predicted {sum(predicted):.0f} s at n = {n_req} exceeds the {available:.0f} s left; n -> {n}")
            predicted = [predict_seconds(pipe, st, level_t, n, n_req) for st in settings]
        phases["warmup"] = _now() - t
        echo(f"sweep: {len(settings)} runs of n = {n}, predicted {sum(predicted):.0f} s")

        scorer = Scorer(data, s, device)
        runs: list[dict] = []
        grids: dict[str, torch.Tensor] = {}
        t = _now()
        with torch.no_grad():
            for i in _priority(settings):  # should time run short, what is skipped is what matters least
                st, pred = settings[i], predicted[i]
                if _now() + pred > deadline - RESERVE:
                    runs.append(dict(st, skipped=f"predicted {pred:.0f} s would pass the deadline"))
                    echo(f"{st['method']:>8} {st}: skipped (predicted {pred:.0f} s, deadline)")
                    continue
                try:
                    x, rep = pipe.run(n, st["method"], steps=st.get("steps"), budget=st.get("budget"), seed=s["seed"])
                except (ValueError, RuntimeError) as e:  # e.g. a budget the calibration cannot plan: go on
                    runs.append(dict(st, skipped=f"error: {type(e).__name__}: {e}"))
                    echo(f"{st['method']:>8} {st}: failed: {type(e).__name__}: {e}")
                    continue
                row = dict(
                    st,
                    steps_run=rep["steps"],
                    top_equivalents=rep["top_equivalents_per_sample"],
                    flops_per_sample=rep["flops_per_sample"],
                    wall_seconds=rep["wall_seconds"],
                    wall_seconds_per_sample=rep["wall_seconds_per_sample"],
                    predicted_seconds=pred,
                    evaluations_per_sample=[lv["evaluations_per_sample"] for lv in rep["levels"]],
                    levels=[lv["level"] for lv in rep["levels"]],
                )
                if "plan" in rep:
                    row["plan"] = rep["plan"]
                row.update(scorer(x))
                runs.append(row)
                knob = f"steps {st['steps']}" if "steps" in st else f"budget {st['budget']:g}"
                echo(
                    f"{st['method']:>8} {knob:>11}: {row['top_equivalents']:8.2f} top-eq/sample, "
                    f"{row['wall_seconds_per_sample'] * 1e3:8.3f} ms/sample, {scorer.metric} "
                    f"{row[scorer.key]:.4g} +- {row[scorer.key + '_se']:.2g}"
                    + (f", SW {row['sliced_wasserstein']:.4f}" if scorer.digits else "")
                )
                # Sample grids for the plot: EM with the most steps, ML-EM with the largest budget.
                if st["method"] in ("em", "mlem") and not any(k.startswith(st["method"] + ":") for k in grids):
                    grids[f"{st['method']}: {knob}"] = x.cpu()
        phases["sweep"] = _now() - t
        runs.sort(key=lambda r: settings.index({k: r[k] for k in ("method", "steps", "budget") if k in r}))
        summary = summarize(runs, scorer)
        for line in summary["lines"]:
            echo(line)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "benchmark": "gpu_images",
        "command": command,
        "argv": argv,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": device_name(device),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "settings": dict(s.items()),
        "data": {
            "name": data.name,
            "n_images": int(data.x.shape[0]),
            "size": data.size,
            "channels": data.channels,
            "skipped_files": len(data.skipped),
        },
        "ladder": {
            "widths": s["widths"],
            "block_out_channels": [[w, 2 * w, 2 * w] for w in s["widths"]],
            "flops": flops,
            "params": params,
            "layers_per_block": 1,
            "norm_groups": s["norm_groups"],
            "saved_in": s["ladder_dir"],
        },
        "training": training,
        "calibration": {
            "gamma": gamma,
            "gamma_se": gamma_se,
            "n": s["cal_n"],
            "steps": s["cal_steps"],
            "seconds": phases["calibrate"],
            "full": cal.to_dict(),
        },
        "metric": {"name": scorer.metric, "key": scorer.key, "description": scorer.description},
        "n_requested": n_req,
        "n": n,
        "pad": s["pad"],
        "level_seconds_per_evaluation": {str(b): v for b, v in level_t.items()},
        "runs": runs,
        "summary": {k: v for k, v in summary.items() if k != "lines"},
        "summary_lines": summary["lines"],
        "real_ladders": real,
        "phases_seconds": phases,
        "plot": plot_path,
    }
    result["total_seconds"] = _now() - t_start
    if plot_path:
        plot(plot_path, result, grids)
    result["total_seconds"] = _now() - t_start
    write_json(out, result)
    echo(f"wrote {out}" + (f" and {plot_path}" if plot_path else "") + f"; total {result['total_seconds']:.1f} s")
    return result


def main(argv: Sequence[str] | None = None, *, command: str | None = None) -> dict:
    """``mlem bench gpu [ARGS]``: the argument list (default ``sys.argv[1:]``); ``command``: the command line
    recorded in the results (default: ``mlem bench gpu`` and the arguments)."""
    t_start = _now()
    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser()
    args = p.parse_args(argv)
    s = resolve(args, p)
    out = args.out or default_outputs("gpu", args.quick)[0]
    plot_path = args.plot if args.plot is not None else os.path.splitext(out)[0] + ".png"
    check_outputs(p, [out, plot_path or None], args.overwrite)

    def echo(line: str) -> None:
        print(f"[{_now() - t_start:6.1f} s] {line}", flush=True)

    if s["device"] == "cpu":  # small tensors on a shared CPU: one thread is faster and far steadier
        with single_thread():
            cpu = device_name(torch.device("cpu"))
            echo(f"device cpu ({cpu}, {torch.get_num_threads()} threads), torch {torch.__version__}")
            return run(s, argv, out, plot_path, t_start, echo, command)
    echo(f"device {s['device']} ({device_name(torch.device(s['device']))}), torch {torch.__version__}")
    return run(s, argv, out, plot_path, t_start, echo, command)


if __name__ == "__main__":
    main()

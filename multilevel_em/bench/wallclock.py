"""Counted cost against real cost: wall seconds per top-level equivalent, ML-EM vs EM-top, and
samples per second at equal quality (issue 13).

ML-EM's savings are counted in top-level equivalents (evaluations weighted by FLOPs, in units
of one top-level evaluation per sample).  This benchmark measures, side by side in one process,

    seconds per top-level equivalent = seconds / (top_equivalents per sample * samples)

for ML-EM and for EM with the top level (EM-top), and the ratio ML-EM / EM-top (target of
issue 13: <= 1.25 on the digits ladder, <= 2 on the MLP ladder), for each execution of the
levels:

* ``eager``: the models' ordinary forward;
* ``traced``: TorchScript traces (``DiffusersUNetAdapter(trace=True)``; for the MLPs a trace of
  the same forward with the time as a tensor);
* ``traced+exact``: traced levels with ``draws="exact"`` (a fixed number of firing rows per step,
  so fewer distinct sub-batch sizes; the law of each sample is unchanged);
* ``traced+wallplan`` (digits): traced levels, ML-EM planned with wall-time level costs (the traced
  levels' measured seconds per sample at the full batch, as ``pipe.calibrate(timing="wall",
  trace=True)`` would give) instead of FLOPs: the budget is then in top-level seconds, and the
  plan avoids levels that are cheap in FLOPs only;
* ``traced+static`` and ``traced+static+wallplan`` (digits): ``draws="static"`` (per-sample coins drawn
  on the host, each level's sub-batch padded to a bucket size: shapes known before the call);
* ``compiled+static+wallplan`` (digits): the levels through ``torch.compile`` (``compile=True``) with
  static draws, against EM-top compiled the same way; every (level, bucket) is compiled before the timed
  repeats (``compile_warm_up_seconds``).

Each ML-EM run is compared with EM-top at ``floor(budget)`` steps run the same way. Two ratios: per
counted top-level equivalent in FLOPs (``ratio``), and with each run's evaluations counted in the wall
plan's units, the levels' measured seconds (``ratio_in_wall_units``): for a plan made in seconds, the
second is the honest one (its budget was spent in those units).

Two ladders:

* ``digits``: the shipped UNet ladder (widths 4/8/16/32), 48 samples, ML-EM planned by budget
  8/16/32/64 with the ladder's calibration, EM-top with floor(budget) steps (the same counted
  cost); also DPM-Solver++ (2M) runs.  Then, on the same initial noise (and, for the SDE runs,
  the same Brownian path): the path error (RMS over samples of the L2 distance to a converged
  reference: EM-top with 256 steps for ML-EM and EM-top, DPM-Solver++ with 100 steps for
  DPM-Solver++, whose noise-to-image map is the probability-flow ODE's) and the samples per
  second each method needs to reach ML-EM's path error (log-log interpolation on its own
  curve).  A per-level micro-benchmark (ms per call by batch size: eager, inference mode,
  channels-last, traced, traced channels-last, traced with padded sub-batch "buckets") and a
  profile of one ML-EM run (seconds in each level against its counted share) show where the
  time goes.
* ``mlp``: the four-MLP ladder of ``mlem bench overhead`` (:mod:`.overhead`) (batch 256, 256 steps, rate settings
  "typical" and "sparse"), with its zero-cost stub twin, which splits the time into levels,
  noise and loop (Python, draws, gathers and scatters).

Runs alternate between methods and executions (the order reverses on every repeat), after a
warm-up; medians over the repeats are reported.  Every run is timed on two clocks: wall time
(what a user waits) and the process's CPU time.  With one thread (``--threads``, default 1)
CPU time is the cost of the computation; on a shared machine wall time also counts the time
spent waiting for a core, which can swing a run by 2-3x (it did where the committed results
were made: 2 cores, load 5-7), so the CPU-time ratios are the ones to read there; on an idle
machine the two agree.  The micro-benchmarks and the profile use CPU time.

Usage::

    mlem bench wallclock            # full (about 10 min of CPU; 30 min on a loaded 2-core machine)
    mlem bench wallclock --quick    # tiny sizes, a smoke test of the script
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..diffusion import DiffusersUNetAdapter
from ..engine import Ladder, bucketed
from ..images import MultilevelPipeline
from . import overhead  # the MLP ladder
from .common import DIGITS_LADDER as DIGITS
from .common import device_name, em_cost_at, rms_error, write_json
from .outputs import add_overwrite_argument, check_outputs, default_outputs, threads_argument

CONFIGS = {
    "full": {
        "n": 48,
        "budgets": (8, 16, 32, 64),
        "repeats": 3,
        "ref_steps": 256,
        "extra_em_steps": (128,),
        "compiled": True,
        "dpm_steps": (5, 10, 20, 40),
        "ode_ref_steps": 100,
        "micro_sizes": (48, 16, 4, 1),
        "micro_calls": 20,
        "micro_channels_last": True,
        "mlp_steps": 256,
        "mlp_batch": 256,
        "mlp_repeats": 7,
    },
    "quick": {
        "n": 4,
        "budgets": (4, 8),
        "repeats": 1,
        "ref_steps": 16,
        "extra_em_steps": (),
        "compiled": False,
        "dpm_steps": (4,),
        "ode_ref_steps": 8,
        "micro_sizes": (4, 1),
        "micro_calls": 2,
        "micro_channels_last": False,
        "mlp_steps": 8,
        "mlp_batch": 16,
        "mlp_repeats": 1,
    },
}
#: ``--compiled-only``: the same ladder and plan (wall-time costs, static draws) run eager, traced and compiled,
#: each against EM-top run the same way, at the issue's two budgets.
COMPILED_ONLY = {
    "budgets": (8, 32),
    "extra_em_steps": (),
    "dpm_steps": (),
    "compiled": True,
    "executions": ("eager+static+wallplan", "traced+static+wallplan", "compiled+static+wallplan"),
}
#: Sub-batch buckets for the padded-execution measurement (a sub-batch is padded to the next one).
BUCKETS = (1, 2, 4, 8, 16, 32, 48)
SEED = 0


def _median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    return statistics.median(a) / statistics.median(b)


# ----------------------------------------------------------------------------- digits ladder


#: ML-EM executions of the digits ladder: (name, execution of the levels, draws, plan units); each is compared
#: with EM-top run the same way (``EM_PAIR``).
MLEM_EXECUTIONS = (
    ("eager", "eager", "per_sample", "flops"),
    ("traced", "traced", "per_sample", "flops"),
    ("traced+exact", "traced", "exact", "flops"),
    ("traced+wallplan", "traced", "per_sample", "wall"),
    ("traced+static", "traced", "static", "flops"),
    ("eager+static+wallplan", "eager", "static", "wall"),
    ("traced+static+wallplan", "traced", "static", "wall"),
    ("compiled+static+wallplan", "compiled", "static", "wall"),
)
#: The EM-top run each execution is compared with.
EM_PAIR = {"eager": "eager", "traced": "traced", "compiled": "compiled"}


def _digits_runs(cfg: dict) -> List[dict]:
    """The timed runs: (execution, method, knobs), in the order of an even repeat."""
    runs = []
    executions = [e for e in MLEM_EXECUTIONS if cfg["compiled"] or e[1] != "compiled"]
    if cfg.get("executions"):
        executions = [e for e in executions if e[0] in cfg["executions"]]
    for b in cfg["budgets"]:
        for name, ex, draws, plan in executions:
            runs.append(
                {
                    "name": f"{name}/mlem/{b:g}",
                    "execution": ex,
                    "method": "mlem",
                    "budget": b,
                    "draws": draws,
                    "plan": plan,
                }
            )
        for ex in dict.fromkeys(e[1] for e in executions):
            runs.append({"name": f"{ex}/em/{b:g}", "execution": ex, "method": "em", "steps": int(b), "budget": b})
    for s in cfg["dpm_steps"]:
        runs.append({"name": f"traced/dpmpp_2m/{s}", "execution": "traced", "method": "dpmpp_2m", "steps": s})
    return runs


def _wall_top_equivalents(report: dict, wall_costs: Sequence[float]) -> float:
    """A run's evaluations per sample counted in measured-seconds units (the top level's seconds = 1).

    ``report["levels"]``: the run's sub-ladder, each with its 1-based ladder ``level``."""
    return sum(lv["evaluations_per_sample"] * wall_costs[lv["level"] - 1] / wall_costs[-1] for lv in report["levels"])


def _pipe_call(pipes: dict, n: int, r: dict, buckets: Optional[Sequence[int]] = None):
    pipe = pipes[r.get("plan", "flops")]
    ex = r["execution"]
    kw = {"trace": ex == "traced", "compile": ex == "compiled", "generator": torch.Generator().manual_seed(SEED)}
    if r["method"] == "mlem":
        if r["draws"] == "static" and buckets is not None:
            kw["buckets"] = buckets
        return pipe(n, method="mlem", budget=r["budget"], draws=r["draws"], **kw)
    return pipe(n, method=r["method"], steps=r["steps"], **kw)


def wall_calibration(pipe, micro: dict, n: int):
    """The ladder's calibration with its costs replaced by the traced levels' measured seconds per sample at
    batch ``n`` (what ``pipe.calibrate(timing="wall", trace=True)`` measures, without re-measuring the level
    differences, which do not depend on the timing).  A budget is then in units of the top level's seconds."""
    import dataclasses

    import numpy as np

    costs = np.array([row["ms_per_call"]["traced"][str(n)] / 1e3 / n for row in micro["levels"]])
    cal = dataclasses.replace(pipe.calibration, costs=costs, timing="wall", cost_unit="wall seconds per sample")
    return MultilevelPipeline(pipe.ladder, cal)


#: The two clocks: wall time (what a user waits) and this process's CPU time (with one thread, what the
#: computation costs; on a shared machine wall time also counts waiting for a core, CPU time does not).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _timed(f, *args, **kw):
    """(result, {"wall": seconds, "cpu": seconds}) of one call."""
    t0 = {k: c() for k, c in CLOCKS.items()}
    out = f(*args, **kw)
    return out, {k: c() - t0[k] for k, c in CLOCKS.items()}


def digits_wallclock(pipes: dict, cfg: dict, echo: Callable) -> dict:
    """Time ML-EM, EM-top and DPM-Solver++ runs on the digits ladder, alternating; path errors and equal quality.

    ``pipes``: {"flops": the shipped pipeline, "wall": the same ladder with wall-time costs}.  Each run is
    timed around the whole pipeline call (noise, sampling, conversion to images) on both clocks."""
    n = cfg["n"]
    runs = _digits_runs(cfg)
    seconds: Dict[str, Dict[str, List[float]]] = {r["name"]: {k: [] for k in CLOCKS} for r in runs}
    top_eq: Dict[str, float] = {}
    wall_eq: Dict[str, float] = {}  # the same evaluations counted in the wall plan's units (measured seconds)
    wall_costs = [float(c) for c in pipes["wall"].calibration.costs]
    samples: Dict[str, torch.Tensor] = {}
    for ex in ("eager", "traced"):  # warm-up: traces, first-use checks, allocator
        _pipe_call(pipes, n, {"execution": ex, "method": "mlem", "budget": cfg["budgets"][0], "draws": "per_sample"})
    # Compiled runs: every (level, bucket size) a run can meet is compiled by running each once (timed apart).
    compile_seconds = None
    compiled = [r for r in runs if r["execution"] == "compiled"]
    if compiled:
        t0 = time.perf_counter()
        for r in compiled:
            _pipe_call(pipes, n, r)
        compile_seconds = time.perf_counter() - t0
        echo(f"  digits: compiled warm-up (every level at every bucket size) {compile_seconds:.0f} s")
    for rep in range(cfg["repeats"]):
        for r in runs if rep % 2 == 0 else runs[::-1]:
            out, dt = _timed(_pipe_call, pipes, n, r)
            for k in CLOCKS:
                seconds[r["name"]][k].append(dt[k])
            top_eq.setdefault(r["name"], out.report["top_equivalents_per_sample"])
            wall_eq.setdefault(r["name"], _wall_top_equivalents(out.report, wall_costs))
            samples.setdefault(r["name"], out.x)
        echo(f"  digits: repeat {rep + 1}/{cfg['repeats']} done")
    # References and the extra EM-top steps for the equal-quality curves, timed once.
    once = {}
    for label, method, steps in [("ref_sde", "em", cfg["ref_steps"]), ("ref_ode", "dpmpp_2m", cfg["ode_ref_steps"])] + [
        (f"traced/em/{s}", "em", s) for s in cfg["extra_em_steps"]
    ]:
        out, dt = _timed(_pipe_call, pipes, n, {"execution": "traced", "method": method, "steps": steps})
        once[label] = {
            "method": method,
            "steps": steps,
            "seconds": dt,
            "top_equivalents_per_sample": out.report["top_equivalents_per_sample"],
        }
        samples[label] = out.x

    table = {}
    for r in runs:
        name = r["name"]
        table[name] = {k: v for k, v in r.items() if k != "name"}
        table[name]["top_equivalents_per_sample"] = top_eq[name]
        table[name]["wall_top_equivalents_per_sample"] = wall_eq[name]
        for k in CLOCKS:
            sk = seconds[name][k]
            table[name].update(
                {
                    f"{k}_seconds": sk,
                    f"{k}_seconds_median": statistics.median(sk),
                    f"{k}_seconds_per_top_equivalent": statistics.median(sk) / (top_eq[name] * n),
                    f"{k}_seconds_per_wall_top_equivalent": statistics.median(sk) / (wall_eq[name] * n),
                    f"{k}_seconds_per_sample": statistics.median(sk) / n,
                }
            )
    ratio = {k: {} for k in CLOCKS}
    ratio_paired = {k: {} for k in CLOCKS}
    ratio_wall_units = {k: {} for k in CLOCKS}
    for k in CLOCKS:
        for ex in dict.fromkeys(r["name"].split("/")[0] for r in runs if r["method"] == "mlem"):
            em_ex = EM_PAIR[next(e[1] for e in MLEM_EXECUTIONS if e[0] == ex)]
            ratio[k][ex], ratio_paired[k][ex], ratio_wall_units[k][ex] = {}, {}, {}
            for b in cfg["budgets"]:
                ml, em = table[f"{ex}/mlem/{b:g}"], table[f"{em_ex}/em/{b:g}"]
                ratio[k][ex][f"{b:g}"] = ml[f"{k}_seconds_per_top_equivalent"] / em[f"{k}_seconds_per_top_equivalent"]
                ratio_wall_units[k][ex][f"{b:g}"] = (
                    ml[f"{k}_seconds_per_wall_top_equivalent"] / em[f"{k}_seconds_per_wall_top_equivalent"]
                )
                ratio_paired[k][ex][f"{b:g}"] = statistics.median(  # repeat by repeat (neighbours in time)
                    (s / ml["top_equivalents_per_sample"]) / (e / em["top_equivalents_per_sample"])
                    for s, e in zip(ml[f"{k}_seconds"], em[f"{k}_seconds"])
                )
    eager_over_traced = {
        k: {
            name.split("/", 1)[1]: table[f"eager/{name.split('/', 1)[1]}"][f"{k}_seconds_median"]
            / v[f"{k}_seconds_median"]
            for name, v in table.items()
            if name.startswith("traced/") and f"eager/{name.split('/', 1)[1]}" in table
        }
        for k in CLOCKS
    }
    quality = _equal_quality(cfg, table, once, samples, n)
    return {
        "compile_warm_up_seconds": compile_seconds,
        "runs": table,
        "once": once,
        "ratio": ratio,
        "ratio_in_wall_units": ratio_wall_units,
        "wall_units": (
            "top-level equivalents counted with the wall plan's level costs (the traced levels' measured CPU "
            "seconds per sample at the full batch) instead of FLOPs: evaluations x seconds-cost / top "
            "seconds-cost; padding rows of static draws are counted (they are computed)"
        ),
        "ratio_paired_median": ratio_paired,
        "eager_over_traced_seconds": eager_over_traced,
        "equal_quality": quality,
    }


def _equal_quality(cfg: dict, table: dict, once: dict, samples: dict, n: int) -> dict:
    """Path errors and the samples per second each method needs to reach ML-EM's error (traced execution)."""
    ref_sde, ref_ode = samples["ref_sde"], samples["ref_ode"]
    err = {}
    for name in table:
        if name.startswith(("eager/", "compiled/em/")) and "traced/" + name.split("/", 1)[1] in table:
            continue  # the same samples up to float rounding: scored once, under "traced"
        ref = ref_ode if table[name]["method"] == "dpmpp_2m" else ref_sde
        err[name] = rms_error(samples[name], ref)
    for label in once:
        if label.startswith("traced/"):
            err[label] = rms_error(samples[label], ref_sde)
    cost = {name: table[name]["top_equivalents_per_sample"] for name in table}
    cost.update({k: v["top_equivalents_per_sample"] for k, v in once.items()})
    em_names = [k for k in err if k.startswith("traced/em/")]
    dpm_names = [k for k in err if "/dpmpp_2m/" in k]
    em_cost = [(cost[k], err[k]) for k in em_names]
    rows = {}
    for ex in dict.fromkeys(k.split("/")[0] for k in table if "/mlem/" in k and not k.startswith("eager/")):
        for b in cfg["budgets"]:
            name = f"{ex}/mlem/{b:g}"
            e = err[name]
            c_em = em_cost_at(em_cost, e)
            rows[name] = {
                "path_error": e,
                "top_equivalents_per_sample": cost[name],
                "em_top_top_equivalents_at_same_error": c_em,
                "speedup_counted_vs_em_top": None if c_em is None else c_em / cost[name],
            }
            for k in CLOCKS:
                sec = {m: table[m][f"{k}_seconds_per_sample"] for m in table}
                sec.update({m: v["seconds"][k] / n for m, v in once.items()})
                s_em = em_cost_at([(sec[m], err[m]) for m in em_names], e)
                s_dpm = em_cost_at([(sec[m], err[m]) for m in dpm_names], e)
                rows[name][k] = {
                    "samples_per_second": 1 / sec[name],
                    "em_top_samples_per_second_at_same_error": None if s_em is None else 1 / s_em,
                    "dpmpp_2m_samples_per_second_at_same_error": None if s_dpm is None else 1 / s_dpm,
                    "speedup_vs_em_top": None if s_em is None else s_em / sec[name],
                    "speedup_vs_dpmpp_2m": None if s_dpm is None else s_dpm / sec[name],
                }
    return {
        "how": (
            "path error: RMS over samples of the L2 distance (256 pixels, data scale [-1, 1]) to a reference on "
            f"the same noise: EM-top {cfg['ref_steps']} steps (same Brownian path) for ML-EM and EM-top, "
            f"DPM-Solver++ {cfg['ode_ref_steps']} steps for DPM-Solver++ (the probability-flow ODE: another "
            "noise-to-image map, so its error is to its own limit); samples per second at equal error: log-log "
            "interpolation on each method's own (seconds per sample, error) runs, None outside them; traced "
            "execution; per clock (wall, cpu)"
        ),
        "path_error": err,
        "mlem": rows,
    }


class _TimedLevel:
    """An eps model that records (rows, CPU seconds) of every call (the profile of one run)."""

    def __init__(self, model, log: list):
        self.model, self.log = model, log

    def __call__(self, x, t):
        start = time.process_time()
        out = self.model(x, t)
        self.log.append((x.shape[0], time.process_time() - start))
        return out


def digits_profile(pipe, budget: float, n: int, trace: bool) -> dict:
    """One ML-EM run with every level call timed (CPU time): seconds per level against its counted share."""
    logs = [[] for _ in pipe.ladder.unets]
    eps_models = pipe.ladder.eps_models
    pipe.ladder.eps_models = lambda trace=False, **kw: [
        _TimedLevel(m, log) for m, log in zip(eps_models(trace, **kw), logs)
    ]
    try:
        out, dt = _timed(
            pipe, n, method="mlem", budget=budget, trace=trace, generator=torch.Generator().manual_seed(SEED)
        )
    finally:
        del pipe.ladder.eps_models  # back to the class's method
    total, costs = dt["cpu"], pipe.ladder.costs
    levels = []
    for i, log in enumerate(logs):
        rows = sum(r for r, _ in log)
        secs = sum(s for _, s in log)
        levels.append(
            {
                "level": i + 1,
                "calls": len(log),
                "rows": rows,
                "seconds": secs,
                "mean_rows_per_call": rows / max(len(log), 1),
                "counted_share": rows * costs[i] / (out.report["top_equivalents_per_sample"] * n * costs[-1]),
                "seconds_share": secs / total,
            }
        )
    in_levels = sum(lv["seconds"] for lv in levels)
    return {
        "budget": budget,
        "trace": trace,
        "clock": "cpu",
        "seconds": total,
        "seconds_in_levels": in_levels,
        "seconds_outside_levels": total - in_levels,
        "wall_seconds": dt["wall"],
        "note": "rows and calls include the one-row shape check of each level on the first call",
        "levels": levels,
    }


def _time_calls(f, x, calls: int, repeats: int = 3) -> float:
    """Median over ``repeats`` of the mean CPU seconds of ``calls`` calls of f(x) (one thread: its cost)."""
    f(x)
    out = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(calls):
            f(x)
        out.append((time.process_time() - start) / calls)
    return statistics.median(out)


def digits_microbench(pipe, cfg: dict) -> dict:
    """ms per call of each level by batch size, for each execution option (interleaved per size)."""
    sch, t = pipe.ladder.schedule, 0.5
    rows = []
    traced = pipe.ladder.eps_models(trace=True)  # the pipeline's own traces (recorded once, reused by sampling)
    for i, unet in enumerate(pipe.ladder.unets):
        options = {
            "eager": (DiffusersUNetAdapter(unet, sch), False, False),
            "eager_inference_mode": (DiffusersUNetAdapter(unet, sch), False, True),
            "traced": (traced[i], False, False),
            "traced_buckets": (bucketed(traced[i], BUCKETS), False, False),
        }
        if cfg["micro_channels_last"]:
            cl = copy.deepcopy(unet).to(memory_format=torch.channels_last)
            options["eager_channels_last"] = (DiffusersUNetAdapter(cl, sch), True, False)
            options["traced_channels_last"] = (DiffusersUNetAdapter(cl, sch, trace=True), True, False)
        row = {"level": i + 1, "width": pipe.ladder.widths[i], "flops": pipe.ladder.costs[i], "ms_per_call": {}}
        for b in cfg["micro_sizes"]:
            x = torch.randn(b, *pipe.ladder.shape, generator=torch.Generator().manual_seed(b))
            xcl = x.contiguous(memory_format=torch.channels_last)
            for name, (m, channels_last, inference) in options.items():
                ctx = torch.inference_mode() if inference else torch.no_grad()
                with ctx:
                    row["ms_per_call"].setdefault(name, {})[str(b)] = 1e3 * _time_calls(
                        lambda z: m(z, t), xcl if channels_last else x, cfg["micro_calls"]
                    )
        rows.append(row)
    top = rows[-1]["ms_per_call"]["eager"][str(cfg["micro_sizes"][0])]
    for row in rows:  # real / counted cost relative to the eager top level at full batch (per sample)
        share = row["flops"] / rows[-1]["flops"]
        row["real_over_counted"] = {
            name: {b: (ms / int(b)) / (top / cfg["micro_sizes"][0]) / share for b, ms in v.items()}
            for name, v in row["ms_per_call"].items()
        }
    return {"sizes": list(cfg["micro_sizes"]), "buckets": list(BUCKETS), "levels": rows}


# ----------------------------------------------------------------------------- MLP ladder


class _TracedMLP:
    """A TorchScript trace of ``overhead.MLPDrift`` with the time passed as a 0-d tensor.

    The same operations as the eager forward, but ``t * v`` is a tensor product instead of the
    add's alpha, so results may differ from eager by float32 rounding (reported as ``max_abs_diff``).
    """

    class _Fwd(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x, t):
            m = self.m
            h = torch.nn.functional.silu(m.l1(x) + m.time * t)
            h = torch.nn.functional.silu(m.l2(h))
            return m.l3(h).mul(0.1).sub(x)

    def __init__(self, m, dim: int):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice
            self.f = torch.jit.trace(self._Fwd(m), (torch.zeros(8, dim), torch.tensor(0.5)), check_trace=False)

    def __call__(self, x, t):
        return self.f(x, torch.tensor(float(t), dtype=x.dtype))


def _mlp_microbench(levels, batch: int, costs, cfg: dict) -> List[dict]:
    """CPU seconds per sample-evaluation of each MLP level at the full batch and sub-batch sizes, and real over
    counted cost (relative to the top level at the full batch)."""
    sizes = sorted(
        {batch, max(1, round(0.3 * batch)), max(1, round(0.1 * batch)), max(1, round(0.03 * batch))}, reverse=True
    )
    rows = []
    for f, c in zip(levels, costs):
        per_sample = {}
        for b in sizes:
            x = torch.randn(b, overhead.DIM, generator=torch.Generator().manual_seed(b))
            per_sample[str(b)] = _time_calls(lambda z: f(z, 0.5), x, cfg["micro_calls"] * 5) / b
        rows.append({"flops": c, "seconds_per_sample": per_sample})
    top = rows[-1]["seconds_per_sample"][str(batch)]
    for row in rows:
        row["real_over_counted"] = {
            b: (v / top) / (row["flops"] / costs[-1]) for b, v in row["seconds_per_sample"].items()
        }
    return rows


def mlp_wallclock(cfg: dict, echo: Callable) -> dict:
    """ML-EM vs EM-top on the MLP ladder, eager and traced, per-sample and exact draws, with the stub breakdown."""
    dev = torch.device("cpu")
    steps, batch = cfg["mlp_steps"], cfg["mlp_batch"]
    mlps, eager, stub = overhead.build_ladders(dev, torch.float32)
    traced_levels = [_TracedMLP(m, overhead.DIM) for m in mlps]
    traced = Ladder(traced_levels, eager.costs, [f"traced_{n}" for n in eager.names])
    x0 = torch.randn(batch, overhead.DIM, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        max_diff = max(float((f(x0, 0.3) - m(x0, 0.3)).abs().max()) for f, m in zip(traced_levels, mlps))
    h = (overhead.T1 - overhead.T0) / steps
    settings = ("typical", "sparse")
    ladders = {"eager": eager, "traced": traced}
    runs = {}
    for ex in ("eager", "traced"):
        runs[f"{ex}/em"] = dict(ladder=ladders[ex], method="em", rates=None, draws="per_sample", diffusion=0.5)
        for s in settings:
            rates = [p / h for p in overhead.SETTINGS[s]]
            runs[f"{ex}/mlem_{s}"] = dict(
                ladder=ladders[ex], method="mlem", rates=rates, draws="per_sample", diffusion=0.5
            )
            runs[f"{ex}+exact/mlem_{s}"] = dict(
                ladder=ladders[ex], method="mlem", rates=rates, draws="exact", diffusion=0.5
            )
    for name in [k for k in runs if k.startswith("eager")]:  # stub twins: same draws, zero-cost levels
        runs[name.replace("eager", "stub", 1)] = dict(runs[name], ladder=stub)
        runs[name.replace("eager", "stub_ode", 1)] = dict(runs[name], ladder=stub, diffusion=None)
    times: Dict[str, Dict[str, List[float]]] = {k: {c: [] for c in CLOCKS} for k in runs}
    te: Dict[str, List[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        for r in runs.values():
            overhead.time_solve(x0=x0, steps=steps, seed=10_000, device=dev, **r)
        order = list(runs)
        for rep in range(cfg["mlp_repeats"]):
            for name in order if rep % 2 == 0 else order[::-1]:
                (_, sol), dt = _timed(overhead.time_solve, x0=x0, steps=steps, seed=rep, device=dev, **runs[name])
                for c in CLOCKS:
                    times[name][c].append(dt[c])
                te[name].append(sol.top_equivalents)
        micro = {
            "eager": _mlp_microbench(mlps, batch, eager.costs, cfg),
            "traced": _mlp_microbench(traced_levels, batch, eager.costs, cfg),
        }
    echo("  mlp: done")
    table = {}
    for name in runs:
        if name.startswith("stub"):
            continue
        table[name] = {
            "method": runs[name]["method"],
            "draws": runs[name]["draws"],
            "top_equivalents": statistics.median(te[name]),
        }
        for c in CLOCKS:
            table[name].update(
                {
                    f"{c}_seconds": times[name][c],
                    f"{c}_seconds_median": statistics.median(times[name][c]),
                    f"{c}_seconds_per_top_equivalent": statistics.median(
                        t / (e * batch) for t, e in zip(times[name][c], te[name])
                    ),
                }
            )
        base = name.split("/", 1)[1]
        if name.startswith("eager/"):
            table[name]["breakdown_seconds"] = {}
            for c in CLOCKS:
                med = statistics.median(times[name][c])
                stub_med = statistics.median(times[f"stub/{base}"][c])
                ode_med = statistics.median(times[f"stub_ode/{base}"][c])
                table[name]["breakdown_seconds"][c] = {
                    "levels": med - stub_med,
                    "noise": stub_med - ode_med,
                    "loop": ode_med,
                }
    ratio = {c: {} for c in CLOCKS}
    for c in CLOCKS:
        for ex in ("eager", "traced", "eager+exact", "traced+exact"):
            em = table[f"{ex.split('+')[0]}/em"]
            ratio[c][ex] = {
                s: table[f"{ex}/mlem_{s}"][f"{c}_seconds_per_top_equivalent"] / em[f"{c}_seconds_per_top_equivalent"]
                for s in settings
            }
    return {
        "batch": batch,
        "steps": steps,
        "widths": list(overhead.WIDTHS),
        "costs_flops": list(eager.costs),
        "settings": {s: list(overhead.SETTINGS[s]) for s in settings},
        "traced_max_abs_diff": max_diff,
        "runs": table,
        "ratio": ratio,
        "level_microbench": micro,
    }


# ----------------------------------------------------------------------------- driver


def run(*, quick: bool = False, threads: int = 1, echo: Callable = print, compiled_only: bool = False) -> dict:
    """Run the benchmark; returns the results (JSON-serialisable). ``compiled_only``: the digits ladder's
    compiled-against-eager comparison alone (:data:`COMPILED_ONLY`; no MLP ladder, no profile)."""
    cfg = dict(CONFIGS["quick" if quick else "full"])
    if compiled_only:
        cfg.update(COMPILED_ONLY)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        pipe = MultilevelPipeline.from_pretrained(DIGITS)
        echo(f"wallclock: torch {torch.__version__}, {threads} thread(s), {'quick' if quick else 'full'}")
        micro = digits_microbench(pipe, cfg)
        wall = wall_calibration(pipe, micro, cfg["n"])
        digits = digits_wallclock({"flops": pipe, "wall": wall}, cfg, echo)
        digits["profile"] = (
            []
            if compiled_only
            else [
                digits_profile(pipe, cfg["budgets"][0], cfg["n"], trace=True),
                digits_profile(pipe, cfg["budgets"][-1], cfg["n"], trace=True),
            ]
        )
        digits["microbench"] = micro
        digits["wall_costs_seconds_per_sample"] = [float(c) for c in wall.calibration.costs]
        digits["wall_plans"] = {
            f"{b:g}": {
                "levels": [lv + 1 for lv in p.levels],
                "steps": p.steps,
                "mu": p.mu,
                "predicted_speedup_in_seconds": p.speedup,
            }
            for b in cfg["budgets"]
            for p in [wall.plan(b)]
        }
        digits.update(
            {
                "n": cfg["n"],
                "budgets": list(cfg["budgets"]),
                "repeats": cfg["repeats"],
                "widths": list(pipe.ladder.widths),
                "costs_flops": list(pipe.ladder.costs),
                "plans": {
                    f"{b:g}": {"levels": [lv + 1 for lv in p.levels], "steps": p.steps, "mu": p.mu}
                    for b in cfg["budgets"]
                    for p in [pipe.plan(b)]
                },
            }
        )
        mlp = None if compiled_only else mlp_wallclock(cfg, echo)
        if mlp is not None:
            mlp["repeats"] = cfg["mlp_repeats"]
    finally:
        torch.set_num_threads(old_threads)
    res = {
        "benchmark": "wallclock",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": "cpu",
        "device_name": device_name(torch.device("cpu")),
        "threads": threads,
        "quick": quick,
        "seconds_total": time.perf_counter() - start,
        "targets": {"digits": 1.25, "mlp": 2.0},
        "digits": digits,
        "mlp": mlp,
    }
    for line in summary_lines(res):
        echo(line)
    return res


def summary_lines(res: dict) -> List[str]:
    """The tables the README quotes (each ratio on both clocks: wall / cpu)."""
    d, m = res["digits"], res["mlp"]

    def f(v):
        return "-" if v is None else f"{v:.2f}"

    out = [
        f"digits ladder, {d['n']} samples, {res['threads']} thread(s), medians of {d['repeats']}: ML-EM / EM-top "
        "seconds per counted top-level equivalent, wall / cpu"
    ]
    budgets = list(next(iter(d["ratio"]["wall"].values())))
    out.append(f"{'execution':>26}" + "".join(f"{'budget ' + b:>16}" for b in budgets))
    for ex in d["ratio"]["wall"]:
        out.append(
            f"{ex:>26}"
            + "".join(f"{d['ratio']['wall'][ex][b]:>9.2f} / {d['ratio']['cpu'][ex][b]:.2f}" for b in budgets)
        )
    out.append("the same, each run's evaluations counted in the wall plan's units (measured seconds per level)")
    for ex in d["ratio_in_wall_units"]["wall"]:
        rw, rc = d["ratio_in_wall_units"]["wall"][ex], d["ratio_in_wall_units"]["cpu"][ex]
        out.append(f"{ex:>26}" + "".join(f"{rw[b]:>9.2f} / {rc[b]:.2f}" for b in budgets))
    same_plan = ("eager+static+wallplan", "traced+static+wallplan", "compiled+static+wallplan")
    if all(f"{ex}/mlem/{budgets[0]}" in d["runs"] for ex in same_plan):
        out.append(
            "one plan (wall-time costs, static draws), three executions: CPU ms per sample, eager / traced / compiled"
        )
        for b in budgets:
            ms = [1e3 * d["runs"][f"{ex}/mlem/{b}"]["cpu_seconds_per_sample"] for ex in same_plan]
            out.append(f"  budget {b}: " + " / ".join(f"{v:.2f}" for v in ms))
    if m is None:
        return out
    out.append(
        f"MLP ladder, batch {m['batch']}, {m['steps']} steps, medians of {m['repeats']}: ML-EM / EM-top, wall / cpu"
    )
    for ex in m["ratio"]["wall"]:
        out.append(
            f"  {ex:>14}: "
            + ", ".join(
                f"{s} {m['ratio']['wall'][ex][s]:.2f} / {m['ratio']['cpu'][ex][s]:.2f}" for s in m["ratio"]["wall"][ex]
            )
        )
    out.append("equal quality (traced, cpu clock): samples per second at ML-EM's path error")
    for name, r in d["equal_quality"]["mlem"].items():
        c = r["cpu"]
        out.append(
            f"  {name:>25}: error {r['path_error']:.3f}, ML-EM {c['samples_per_second']:.2f}/s, EM-top "
            f"{f(c['em_top_samples_per_second_at_same_error'])}/s, DPM-Solver++ "
            f"{f(c['dpmpp_2m_samples_per_second_at_same_error'])}/s; ML-EM's speedup over EM-top: "
            f"{f(c['speedup_vs_em_top'])} in seconds, {f(r['speedup_counted_vs_em_top'])} counted"
        )
    return out


def main(argv: Optional[Sequence[str]] = None, *, command: Optional[str] = None) -> dict:
    """``mlem bench wallclock [ARGS]``: the argument list (default ``sys.argv[1:]``); ``command`` is accepted for
    the command line's uniform call and not recorded (the results never held one)."""
    p = argparse.ArgumentParser(prog="mlem bench wallclock", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (< 30 s): checks the script runs")
    p.add_argument("--threads", type=threads_argument, default=1, help="torch CPU threads (default 1)")
    p.add_argument(
        "--out",
        default=None,
        help="JSON output path (default results/wallclock.json; results/wallclock_quick.json with --quick)",
    )
    p.add_argument(
        "--compiled-only",
        action="store_true",
        help="only the digits ladder's eager / traced / compiled ML-EM (static draws, wall-time plan) and EM-top at "
        "budgets 8 and 32 (about 10 min, most of it compiling); default output results/wallclock_compiled.json",
    )
    add_overwrite_argument(p)
    args = p.parse_args(argv)
    if args.compiled_only and args.out is None:
        out = "results/wallclock_compiled" + ("_quick" if args.quick else "") + ".json"
    else:
        out = args.out or default_outputs("wallclock", args.quick)[0]
    check_outputs(p, [out], args.overwrite)
    res = run(quick=args.quick, threads=args.threads, compiled_only=args.compiled_only)
    write_json(out, res)
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])

"""``mlem bench rates``: closed-form, sensitivity-weighted and learned ML-EM rates at equal cost.

For each problem (MLP ladders on the exact-score ``gaussian`` and ``mixture`` problems of
``mlem bench diffusion``, and the shipped ``digits`` UNet ladder) and each sampler ("em", the
reverse SDE, and "dpmpp_2m", DPM-Solver++ 2M on the probability-flow ODE) at a fixed step count:

1. :func:`~multilevel_em.diffusion.rates.measure_profiles` measures delta_l(t) on every call and the
   sensitivity s_l(t) on 8 blocks of calls (``n_profile`` noise samples, one seed);
2. every rate kind gets the probabilities p_{n,l} whose *expected* cost is the budget (top-level
   equivalents per sample): "closed" lambda = mu delta / sqrt(C) (the planner's rates), "sensitivity"
   lambda = mu s delta / sqrt(C) (with a floor keeping a fired correction's kick below the state's RMS
   norm), and "learned" (:func:`~multilevel_em.diffusion.rates.learn_probabilities`, started from the
   closed form, MLP problems only);
3. each kind runs ML-EM (:class:`~multilevel_em.diffusion.MultilevelDenoiser`, counted cost) on
   ``seeds`` fresh sets of noise (new x_T, Brownian path and level draws per seed, the same for
   every kind) and is scored by its mean squared distance to the top model alone in the same sampler
   with the same step count and noise (the variance ML-EM adds; the step error is the same for all
   kinds).

The gain of a kind is MSE(closed) / MSE(kind) at equal cost: the geometric mean over seeds of the
per-seed ratios, with the interval exp(mean log ratio +- 2 se) over seeds.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from .common import single_thread, write_json

__all__ = ["run_rates_bench", "SETTINGS"]

PROBLEMS = ("gaussian", "mixture", "digits")
MLP_T_MIN = 1e-4  # as mlem bench diffusion
DIGITS_T_MIN = 1e-3  # as the image pipeline

SETTINGS = {
    "full": {
        "problems": ("gaussian", "mixture", "digits"),
        "mlp": dict(
            dim=8,
            train_steps=2000,
            n_profile=256,
            n_eval=512,
            seeds=5,
            blocks=8,
            samplers={"em": (100, (10, 25)), "dpmpp_2m": (20, (3, 6))},
            learned=dict(iterations=100, batch=256),
        ),
        "digits": dict(
            n_profile=32,
            n_eval=128,
            seeds=5,
            blocks=8,
            samplers={"em": (64, (8, 16)), "dpmpp_2m": (16, (3, 6))},
            learned=None,
        ),
    },
    "quick": {
        "problems": ("mixture",),
        "mlp": dict(
            dim=4,
            train_steps=100,
            n_profile=32,
            n_eval=64,
            seeds=2,
            blocks=4,
            samplers={"em": (20, (4,)), "dpmpp_2m": (8, (3,))},
            learned=dict(iterations=3, batch=16),
        ),
        "digits": dict(n_profile=4, n_eval=8, seeds=2, blocks=2, samplers={"dpmpp_2m": (6, (2,))}, learned=None),
    },
}


def _ladder(problem: str, settings: Dict, seed: int, echo):
    """(models, costs, schedule, state shape, t_min, description) of one problem."""
    if problem == "digits":
        from ..images.pipeline import MultilevelPipeline

        pipe = MultilevelPipeline.from_pretrained(
            os.path.join(os.path.dirname(__file__), "..", "images", "pretrained", "digits")
        )
        L = pipe.ladder
        return (
            L.eps_models(False),
            list(L.costs),
            L.schedule,
            tuple(L.shape),
            DIGITS_T_MIN,
            {"ladder": "shipped digits UNets", "widths": list(L.widths)},
        )
    from ..diffusion import train_mlp_ladder
    from ..problems.gaussian import gaussian, gaussian_mixture

    s = settings["mlp"]
    make = gaussian if problem == "gaussian" else gaussian_mixture
    P = make(s["dim"], seed=seed)
    t0 = time.perf_counter()
    mlp = train_mlp_ladder(P, (32, 64, 128, 256), steps=s["train_steps"], seed=seed)
    echo(f"{problem}: trained MLP widths 32..256 ({s['train_steps']} steps) in {time.perf_counter() - t0:.0f} s")
    return (
        list(mlp.models),
        list(mlp.costs),
        mlp.schedule,
        (s["dim"],),
        MLP_T_MIN,
        {"ladder": "MLP eps models", "widths": list(mlp.widths), "train_steps": s["train_steps"]},
    )


def _noise(sampler: str, shape, t_min: float, seed: int, steps: int):
    """x_T and the sampler options for one seed ("em": a BrownianPath shared by every run of the seed)."""
    from ..engine import BrownianPath

    x = torch.randn(
        shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32 if len(shape) > 2 else torch.float64
    )
    if sampler != "em":
        return x, {}
    depth = max(steps, 64).bit_length() + 2
    return x, {"noise": BrownianPath(x.shape, t_min, 1.0, seed=seed + 1, dtype=x.dtype, depth=depth), "t_min": t_min}


def _gain(closed: Sequence[float], other: Sequence[float]) -> Dict:
    """Geometric mean of MSE(closed) / MSE(other) over seeds, with exp(mean log +- 2 se)."""
    r = np.log(np.asarray(closed) / np.asarray(other))
    m = float(r.mean())
    se = float(r.std(ddof=1) / math.sqrt(len(r))) if len(r) > 1 else math.nan
    return {
        "gain": math.exp(m),
        "log_se": se,
        "lo": math.exp(m - 2 * se),
        "hi": math.exp(m + 2 * se),
        "resolved": bool(abs(m) > 2 * se),
    }


def _one(problem: str, sampler: str, steps: int, budgets, models, costs, schedule, shape, t_min, cfg, seed, echo):
    from ..calibration.rates import expected_cost
    from ..calibration.rates import per_call_rates as as_rates
    from ..diffusion import MultilevelDenoiser, sample
    from ..diffusion.rates import learn_probabilities, measure_profiles

    t0 = time.perf_counter()
    x, opts = _noise(sampler, (cfg["n_profile"], *shape), t_min, seed + 31, steps)
    prof = measure_profiles(
        models,
        schedule,
        x,
        sampler=sampler,
        steps=steps,
        blocks=cfg["blocks"],
        generator=torch.Generator().manual_seed(seed + 32),
        **opts,
    )
    echo(
        f"{problem}/{sampler}: profiles measured in {time.perf_counter() - t0:.0f} s; sensitivity of the top "
        "correction by block (t high -> low): " + ", ".join(f"{v:.3g}" for v in prof.sensitivity[:, -1])
    )
    c = np.asarray(costs, dtype=float) / costs[-1]
    out = {
        "sampler": sampler,
        "steps": steps,
        "profiles": prof.to_dict(),
        "block_times": [float(np.mean(prof.times[b])) for b in prof.block_calls],
        "budgets": [],
    }
    tops = []
    for s in range(cfg["seeds"]):
        xe, o = _noise(sampler, (cfg["n_eval"], *shape), t_min, seed + 1000 + 10 * s, steps)
        tops.append((xe, o, sample(models[-1], xe, schedule=schedule, steps=steps, sampler=sampler, **o).x))
    for B in budgets:
        row = {"budget": B, "kinds": {}, "unreachable": {}}
        ps = {}
        for k in ("closed", "sensitivity"):
            try:
                ps[k] = prof.shape(k).probabilities(costs, B)
            except ValueError as e:  # e.g. the sensitivity floor alone costs more than the budget
                row["unreachable"][k] = str(e)
                echo(f"{problem}/{sampler}, budget {B:g}: {k} rates cannot meet it ({e})")
        if "closed" not in ps:
            out["budgets"].append(row)
            continue
        if cfg.get("learned"):
            L = cfg["learned"]

            def draw(i, _n=L["batch"]):
                return _noise(sampler, (_n, *shape), t_min, seed + 5000 + 7 * i, steps)

            t1 = time.perf_counter()
            learned = learn_probabilities(
                models,
                costs,
                schedule,
                draw,
                sampler=sampler,
                steps=steps,
                budget=B,
                init=ps["closed"],
                iterations=L["iterations"],
                batch=L["batch"],
                seed=seed + 33,
            )
            ps["learned"] = learned.p
            row["learning"] = {
                "losses": learned.losses,
                "settings": learned.settings,
                "seconds": time.perf_counter() - t1,
            }
        for kind, p in ps.items():
            mses, counted, secs = [], [], 0.0
            for s, (xe, o, top) in enumerate(tops):
                den = MultilevelDenoiser(
                    models,
                    costs=costs,
                    rates=as_rates(prof.times, prof.spans, p),
                    generator=torch.Generator().manual_seed(seed + 2000 + s),
                    schedule=schedule,
                )
                t1 = time.perf_counter()
                res = sample(den, xe, schedule=schedule, steps=steps, sampler=sampler, **o)
                secs += time.perf_counter() - t1
                mse = float((res.x - top).double().flatten(1).pow(2).sum(1).mean())
                if not math.isfinite(mse):
                    raise FloatingPointError(f"{problem}/{sampler}/{kind}: ML-EM samples are NaN or Inf")
                mses.append(mse)
                counted.append(float(res.top_equivalents))
            row["kinds"][kind] = {
                "mse": mses,
                "mse_mean": float(np.mean(mses)),
                "expected_cost": expected_cost(p, c),
                "counted_cost": float(np.mean(counted)),
                "seconds_per_sample": secs / (len(tops) * cfg["n_eval"]),
                "p_mean_per_correction": p.mean(0).tolist(),
            }
        for kind in ps:
            if kind != "closed":
                row["kinds"][kind]["gain_vs_closed"] = _gain(row["kinds"]["closed"]["mse"], row["kinds"][kind]["mse"])
        out["budgets"].append(row)
        echo(
            f"{problem}/{sampler} {steps} steps, budget {B:g} top-eq: "
            + "; ".join(
                f"{k} MSE {v['mse_mean']:.3g} (cost {v['counted_cost']:.2f})"
                + (
                    f", gain {v['gain_vs_closed']['gain']:.2f} [{v['gain_vs_closed']['lo']:.2f}, "
                    f"{v['gain_vs_closed']['hi']:.2f}]"
                    if "gain_vs_closed" in v
                    else ""
                )
                for k, v in row["kinds"].items()
            )
        )
    out["seconds"] = time.perf_counter() - t0
    return out


def add_predictions(result: Dict) -> Dict:
    """Add to every closed / sensitivity row the first-order predicted MSE with and without the measured
    sensitivity (:meth:`Profiles.predicted_mse`), recomputing p from the stored profiles (deterministic)."""
    from ..diffusion.rates import Profiles

    for prob in result["problems"]:
        costs = prob["costs_top_equivalents"]
        for run in prob["runs"]:
            prof = Profiles.from_dict(run["profiles"])
            for row in run["budgets"]:
                for kind, v in row["kinds"].items():
                    if kind == "learned":
                        continue
                    p = prof.shape(kind).probabilities(costs, row["budget"])
                    v["predicted_mse_first_order"] = prof.predicted_mse(p, propagate=True)
                    v["predicted_mse_no_propagation"] = prof.predicted_mse(p, propagate=False)
    return result


def plot(result: Dict, path: str) -> None:
    """Left: the measured sensitivity of the top correction against t; right: gains over the closed form."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels, gains, los, his, colors = [], [], [], [], []
    for prob in result["problems"]:
        for run in prob["runs"]:
            name = f"{prob['problem']}/{run['sampler']}"
            a.plot(run["block_times"], np.asarray(run["profiles"]["sensitivity"])[:, -1], "o-", label=name)
            for row in run["budgets"]:
                for kind in ("sensitivity", "learned"):
                    g = row["kinds"].get(kind, {}).get("gain_vs_closed")
                    if g is None:
                        continue
                    labels.append(f"{name}\nB={row['budget']:g} {kind[:4]}")
                    gains.append(g["gain"])
                    los.append(g["gain"] - g["lo"] if math.isfinite(g["lo"]) else 0.0)
                    his.append(g["hi"] - g["gain"] if math.isfinite(g["hi"]) else 0.0)
                    colors.append("tab:blue" if kind == "sensitivity" else "tab:orange")
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("t (diffusion time; sampling runs from t = 1 down)")
    a.set_ylabel("sensitivity s(t) of the top correction")
    a.set_title("How much of an error made at t survives")
    a.legend(fontsize=8)
    xs = np.arange(len(gains))
    b.bar(xs, gains, color=colors, yerr=[los, his], capsize=3)
    b.axhline(1.0, color="k", lw=0.8)
    b.set_yscale("log")
    b.set_xticks(xs)
    b.set_xticklabels(labels, rotation=90, fontsize=6)
    b.set_ylabel("MSE(closed) / MSE(kind) at equal cost")
    b.set_title(
        "Gain over closed-form rates at equal cost\n(blue: sensitivity, orange: learned; bars: +-2 se over seeds)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_rates_bench(
    *,
    quick: bool = False,
    problems: Optional[Sequence[str]] = None,
    seed: int = 0,
    out: Optional[str] = "results/rates.json",
    plot_path: Optional[str] = "results/rates.png",
    command: Optional[str] = None,
    echo: Callable[[str], None] = print,
) -> Dict:
    """Run every problem x sampler x budget x rate kind; write the JSON and the plot; return the result."""
    settings = SETTINGS["quick" if quick else "full"]
    problems = tuple(problems or settings["problems"])
    for p in problems:
        if p not in PROBLEMS:
            raise ValueError(f"problems: expected some of {', '.join(PROBLEMS)}, got {p!r}")
    t0 = time.perf_counter()
    per: List[Dict] = []
    with single_thread():
        for p in problems:
            models, costs, schedule, shape, t_min, desc = _ladder(p, settings, seed, echo)
            cfg = settings["digits" if p == "digits" else "mlp"]
            runs = [
                _one(p, s, steps, budgets, models, costs, schedule, shape, t_min, cfg, seed, echo)
                for s, (steps, budgets) in cfg["samplers"].items()
            ]
            per.append(
                {
                    "problem": p,
                    **desc,
                    "costs_top_equivalents": (np.asarray(costs) / costs[-1]).tolist(),
                    "settings": {k: v for k, v in cfg.items() if k != "samplers"},
                    "runs": runs,
                }
            )
    summary = []
    for prob in per:
        for run in prob["runs"]:
            for row in run["budgets"]:
                for kind, v in row["kinds"].items():
                    if "gain_vs_closed" in v:
                        g = v["gain_vs_closed"]
                        summary.append(
                            {
                                "problem": prob["problem"],
                                "sampler": run["sampler"],
                                "steps": run["steps"],
                                "budget": row["budget"],
                                "kind": kind,
                                "gain": g["gain"],
                                "lo": g["lo"],
                                "hi": g["hi"],
                                "resolved": g["resolved"],
                            }
                        )
    result = {
        "benchmark": "rates",
        "command": command or ("mlem bench rates" + (" --quick" if quick else "")),
        "quick": quick,
        "seed": seed,
        "torch": torch.__version__,
        "metric": "mean squared distance to the top model alone (same sampler, steps and noise) at equal "
        "expected cost; gain = MSE(closed) / MSE(kind), geometric mean over seeds, interval "
        "exp(mean log ratio +- 2 se)",
        "machine": "1 torch thread, shared CPU",
        "problems": per,
        "summary": summary,
        "seconds": time.perf_counter() - t0,
    }
    add_predictions(result)
    if out:
        write_json(out, result)
    if plot_path:
        plot(result, plot_path)
    for s in summary:
        echo(
            f"{s['problem']:>8}/{s['sampler']:<8} budget {s['budget']:>4g}: {s['kind']:<11} gain "
            f"{s['gain']:.2f} [{s['lo']:.2f}, {s['hi']:.2f}]{'' if s['resolved'] else ' (not resolved)'}"
        )
    return result

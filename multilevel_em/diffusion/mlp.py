"""Ladders of small MLP noise-prediction networks for the exact-score problems.

:class:`EpsMLP` is an eps model ``(x, t) -> eps`` for data in R^d: sinusoidal features of
the continuous time t concatenated to x, then ``depth`` hidden layers of ``width`` units
(SiLU).  :func:`train_mlp_ladder` trains one per width on exact samples of a problem
(:mod:`multilevel_em.problems.gaussian`) by denoising score matching,

    min E_{t ~ U(t_min, 1), x0 ~ data, e ~ N(0, I)} |eps_theta(alpha x0 + sigma e, t) - e|^2,

deterministically from a seed, and returns an :class:`MLPLadder`: the models cheapest
first, their costs (FLOPs per sample, counted from the layer shapes) and a JSON-able
config.  :meth:`MLPLadder.save` writes a folder::

    DIR/config.json            widths, depth, time features, costs, schedule, problem spec
    DIR/level_1.safetensors    the weights of level 1 (cheapest), ...

and :func:`load_mlp_ladder` reads it back, checking every file against the config.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .._fit import loglog_slope
from .._io import atomic_write, write_json
from ..engine import Ladder
from .schedule import VPSchedule, as_time

__all__ = ["EpsMLP", "MLPLadder", "eps_error", "load_mlp_ladder", "measure_gamma", "problem_spec", "train_mlp_ladder"]

FORMAT = "multilevel-em/mlp-ladder"
VERSION = 1


class EpsMLP(torch.nn.Module):
    """eps(x, t) = MLP([x, phi(t)]), x of shape (batch, dim), t a float or a (batch,) tensor in [0, 1].

    phi(t) = [sin(w_k T t), cos(w_k T t)]_{k < time_features/2} with w_k = max_period^(-k / (time_features/2))
    and T = 1000: the transformer/DDPM sinusoidal embedding of the integer timestep, on continuous t.

    Args:
        dim: data dimension d.
        width: units per hidden layer.
        depth: number of hidden layers (>= 1).
        time_features: size of phi(t) (even).
        max_period: the embedding's longest period (in units of t T).

    The weights are float32; inputs of another dtype are cast in and the output cast back.
    """

    def __init__(self, dim: int, width: int, depth: int = 3, time_features: int = 32, max_period: float = 10000.0):
        super().__init__()
        for name, v, lo in (
            ("dim", dim, 1),
            ("width", width, 1),
            ("depth", depth, 1),
            ("time_features", time_features, 2),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
        if time_features % 2:
            raise ValueError(f"time_features: expected an even number, got {time_features}")
        self.dim, self.width, self.depth, self.time_features = dim, width, depth, time_features
        self.max_period = float(max_period)
        half = time_features // 2
        self.register_buffer(
            "freqs",
            torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=torch.float32) / half),
            persistent=False,
        )
        sizes = [dim + time_features] + [width] * depth + [dim]
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def config(self) -> Dict:
        return {
            "dim": self.dim,
            "width": self.width,
            "depth": self.depth,
            "time_features": self.time_features,
            "max_period": self.max_period,
        }

    def flops(self) -> int:
        """FLOPs per sample: 2 in out + out per linear layer (multiply-add, bias), 4 per hidden unit
        (SiLU), 3 per time feature (scale, sin/cos)."""
        total = sum(2 * m.in_features * m.out_features + m.out_features for m in self.layers)
        return int(total + 4 * self.width * self.depth + 3 * self.time_features)

    def time_embedding(self, t, batch: int) -> torch.Tensor:
        tt = as_time(t).to(torch.float32)
        if tt.ndim == 0:
            tt = tt.expand(batch)
        arg = 1000.0 * tt[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x: expected shape (batch, {self.dim}), got {tuple(x.shape)}")
        h = torch.cat([x.to(torch.float32), self.time_embedding(t, x.shape[0]).to(x.device)], dim=1)
        for layer in self.layers[:-1]:
            h = torch.nn.functional.silu(layer(h))
        return self.layers[-1](h).to(x.dtype)


# ----------------------------------------------------------------------------- problems as data


def problem_spec(problem) -> Dict:
    """A JSON-able description of a Gaussian / mixture problem (its parameters, exactly); read it back with
    :func:`multilevel_em.problems.gaussian.problem_from_spec`."""
    kind = "gaussian" if callable(getattr(problem, "ode_flow", None)) else "mixture"
    return {
        "kind": kind,
        "dim": problem.dim,
        "weights": problem.weights.tolist(),
        "means": problem.means.tolist(),
        "covs": problem.covs.tolist(),
    }


# ----------------------------------------------------------------------------- the ladder


@dataclass
class MLPLadder:
    """Trained EpsMLPs cheapest first, with their FLOP costs and the config that rebuilds them.

    ``ladder()`` gives a :class:`~multilevel_em.Ladder` (costs in FLOPs per sample) for
    :class:`~multilevel_em.diffusion.MultilevelDenoiser` and friends;
    ``multilevel_em.problems.gaussian.problem_from_spec(config["problem"], schedule)`` rebuilds the problem.
    """

    models: List[EpsMLP]
    config: Dict = field(default_factory=dict)

    @property
    def costs(self) -> List[float]:
        return [float(m.flops()) for m in self.models]

    @property
    def widths(self) -> List[int]:
        return [m.width for m in self.models]

    @property
    def schedule(self) -> VPSchedule:
        return VPSchedule.from_dict(self.config.get("schedule"), 'config["schedule"]')

    def ladder(self) -> Ladder:
        return Ladder(list(self.models), self.costs, names=[f"width {w}" for w in self.widths])

    def save(self, directory: str) -> None:
        """Write config.json and level_k.safetensors (k = 1..K) into ``directory``."""
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        for k, m in enumerate(self.models, start=1):
            tensors = {name: p.detach().contiguous().cpu() for name, p in m.state_dict().items()}
            meta = {"format": FORMAT, "level": str(k), "width": str(m.width)}
            atomic_write(
                os.path.join(directory, f"level_{k}.safetensors"),
                lambda tmp, t=tensors, md=meta: save_file(t, tmp, metadata=md),
            )
        cfg = dict(
            self.config,
            format=FORMAT,
            version=VERSION,
            levels=len(self.models),
            widths=self.widths,
            costs=self.costs,
            cost_unit="FLOPs per sample",
            files=[f"level_{k}.safetensors" for k in range(1, len(self.models) + 1)],
        )
        write_json(os.path.join(directory, "config.json"), cfg)


def load_mlp_ladder(directory: str) -> MLPLadder:
    """Read a folder written by :meth:`MLPLadder.save`; raise ValueError naming the file at fault."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = os.path.join(directory, "config.json")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no config.json; expected a folder written by MLPLadder.save") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{path}: format {cfg.get('format')!r}, expected {FORMAT!r}")
    VPSchedule.from_dict(cfg.get("schedule"), f'{path}: "schedule"')  # a clear error now, not at first use
    models = []
    for k, (fname, width) in enumerate(zip(cfg["files"], cfg["widths"]), start=1):
        fpath = os.path.join(directory, fname)
        m = EpsMLP(cfg["dim"], width, cfg["depth"], cfg["time_features"], cfg["max_period"])
        try:
            tensors = load_file(fpath)
        except FileNotFoundError:
            raise FileNotFoundError(f"{fpath}: missing (config.json lists it as level {k})") from None
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{fpath}: not a readable safetensors file ({e})") from None
        expected = {n: tuple(p.shape) for n, p in m.state_dict().items()}
        got = {n: tuple(p.shape) for n, p in tensors.items()}
        if got != expected:
            missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
            wrong = sorted(n for n in set(got) & set(expected) if got[n] != expected[n])
            detail = "; ".join(
                s
                for s in (
                    f"missing {missing}" if missing else "",
                    f"unexpected {extra}" if extra else "",
                    ", ".join(f"{n}: shape {got[n]}, expected {expected[n]}" for n in wrong),
                )
                if s
            )
            raise ValueError(
                f"{fpath}: does not match config.json (level {k}: dim {cfg['dim']}, width {width}, depth {cfg['depth']}): "
                f"{detail}"
            )
        m.load_state_dict(tensors)
        m.eval()
        if abs(m.flops() - cfg["costs"][k - 1]) > 0.5:
            raise ValueError(f"{path}: costs[{k - 1}] = {cfg['costs'][k - 1]} but level {k} counts {m.flops()} FLOPs")
        models.append(m)
    return MLPLadder(models, cfg)


# ----------------------------------------------------------------------------- training


def train_mlp_ladder(
    problem,
    widths: Sequence[int] = (32, 64, 128, 256),
    schedule: Optional[VPSchedule] = None,
    *,
    steps: int = 2000,
    batch: int = 512,
    lr: float = 2e-3,
    seed: int = 0,
    depth: int = 3,
    time_features: int = 32,
    t_min: float = 1e-4,
    progress: Optional[Callable[[int], None]] = None,
) -> MLPLadder:
    """Train one :class:`EpsMLP` per width on exact samples of ``problem`` (denoising score matching).

    Each level: Adam with learning rate ``lr`` decayed to 0 on a cosine, ``steps`` steps of
    ``batch`` fresh triples (x0 ~ problem.sample, t ~ U(t_min, 1), e ~ N(0, I)).  Weights and
    data come from generators seeded by (seed, level), so the result is a function of the
    arguments alone.  ``progress(n)`` is called after every n optimizer steps (for a progress bar).
    """
    schedule = schedule if schedule is not None else problem.schedule
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
    widths = [int(w) for w in widths]
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"widths: expected positive ints, got {widths}")
    if any(b < a for a, b in zip(widths, widths[1:])):  # as train_ladder: a Ladder's costs must not fall
        raise ValueError(f"widths: expected nondecreasing widths, cheapest first, got {widths}")
    models = []
    for level, width in enumerate(widths, start=1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1_000_003 * seed + level)
            model = EpsMLP(problem.dim, width, depth, time_features)
        g = torch.Generator().manual_seed(2_000_029 * seed + level)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: 0.5 * (1 + math.cos(math.pi * n / steps)))
        model.train()
        for n in range(steps):
            x0 = problem.sample(batch, generator=g).to(torch.float32)
            t = t_min + (1 - t_min) * torch.rand(batch, generator=g, dtype=torch.float64)
            e = torch.randn(x0.shape, generator=g, dtype=torch.float32)
            xt = schedule.add_noise(x0, e, t)
            loss = (model(xt, t) - e).pow(2).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if progress is not None and (n + 1) % 50 == 0:
                progress(50)
        if progress is not None and steps % 50:
            progress(steps % 50)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        models.append(model)
    config = {
        "dim": problem.dim,
        "depth": depth,
        "time_features": time_features,
        "max_period": models[0].max_period,
        "schedule": schedule.to_dict(),
        "problem": problem_spec(problem),
        "training": {
            "steps": steps,
            "batch": batch,
            "lr": lr,
            "seed": seed,
            "t_min": t_min,
            "loss": "denoising score matching on eps, t ~ U(t_min, 1)",
        },
    }
    return MLPLadder(models, config)


# ----------------------------------------------------------------------------- errors and gamma


def eps_error(model, problem, *, n: int = 1024, times: int = 32, t_min: float = 1e-4, seed: int = 0) -> float:
    """RMS over t on a uniform grid in [t_min, 1] and x ~ p_t of |model(x, t) - eps_exact(x, t)| (per sample)."""
    g = torch.Generator().manual_seed(seed)
    x0 = problem.sample(n, generator=g)
    total = 0.0
    with torch.no_grad():
        for t in torch.linspace(t_min, 1.0, times, dtype=torch.float64).tolist():
            xt = problem.schedule.add_noise(x0, torch.randn(x0.shape, generator=g, dtype=x0.dtype), t)
            total += float((model(xt, t).to(xt.dtype) - problem.eps(xt, t)).pow(2).sum(1).mean())
    return math.sqrt(total / times)


def measure_gamma(mlp: MLPLadder, problem, **kw) -> Dict:
    """Each level's eps error vs the exact eps and its cost; gamma = slope of log(cost) vs log(1/error)."""
    errors = [eps_error(m, problem, **kw) for m in mlp.models]
    out = {"widths": mlp.widths, "costs": mlp.costs, "errors": errors, "gamma": None, "gamma_stderr": None}
    if len(errors) >= 3:
        out["gamma"], out["gamma_stderr"] = loglog_slope(mlp.costs, errors)
    return out

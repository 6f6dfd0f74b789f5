"""Training a UNet ladder: eps-prediction (DDPM loss), AdamW, EMA, atomic resumable checkpoints.

Levels are trained one after the other, each for ``iters`` iterations on the same data and
schedule.  Everything random at iteration i of level l (the batch, the timesteps, the noise)
comes from a generator seeded by (seed, l, i), and the initial weights from (seed, l), so a
run interrupted and resumed from its last checkpoint ends with the same weights as an
uninterrupted run (on the same machine and thread count).

A checkpoint of level l (every ``save_every`` iterations and at the end) is, in ``DIR/level_l``:
``training_state.safetensors`` (raw weights ``model.*``, EMA weights ``ema.*``, AdamW moments
``optim.*``, the losses so far, and the iteration count in its metadata; written atomically,
the authority on resume), ``training_state.json`` (the iteration count and settings, for
humans), and the sampling weights + config (EMA weights when ``ema_decay > 0``).
"""

from __future__ import annotations

import math
import os
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch

from .._io import remove_temporaries, write_json
from ..diffusion import VPSchedule
from .data import ImageData
from .ladder import (
    INDEX,
    CheckpointError,
    UNetLadder,
    build_unet,
    load_ladder,
    load_tensors,
    read_json,
    save_level,
    save_tensors,
    schedule_to_dict,
    unet_flops,
)

__all__ = ["train_ladder", "plot_losses", "TRAIN_STATE", "Objective", "TrainingDiverged"]

TRAIN_STATE = "training_state"
WARMUP = 50  # iterations of linear learning-rate warm-up


class Objective:
    """What each level is built as and regresses onto: the hook :func:`train_ladder` trains through.

    The default is the DDPM loss: ``build_unet(width)`` regressing the noise ``eps``. A subclass
    (e.g. distillation, :mod:`.distill`) overrides :meth:`build` and :meth:`target`; everything
    else (draws, AdamW, EMA, checkpoints, resume) stays the training loop's.
    """

    def build(self, width: int, **shapes):
        """A fresh, untrained model of base width ``width`` (``shapes``: sample_size, channels, ...)."""
        return build_unet(width, **shapes)

    def target(self, xt: torch.Tensor, k: torch.Tensor, eps: torch.Tensor, **conditioning) -> torch.Tensor:
        """The regression target for inputs ``xt`` ``(batch, C, H, W)`` at integer timesteps ``k`` ``(batch,)``
        made with noise ``eps`` (same shape as ``xt``), under the model keyword arguments ``conditioning``."""
        return eps

    #: Shapes of one conditioning row (conditioning.Conditioning.spec) for conditional models, else None:
    #: FLOPs are counted with it and the ladder's index stores it.
    conditioning_spec: Optional[Dict] = None

    def draw_conditioning(self, idx: torch.Tensor, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        """The model keyword arguments (per row) for the batch of data rows ``idx`` ``(batch,)``, drawn
        from the iteration's ``generator`` after everything else (so unconditional runs draw nothing)."""
        return {}

    def settings(self) -> Dict:
        """Extra settings a resumed run must match (stored in ``model_index.json``'s "training")."""
        return {}

    #: Files the objective itself may have put in a new ladder folder before training (e.g. a data cache).
    files: tuple = ()


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def _settings(data: ImageData, widths, seed, batch, lr, ema_decay, layers_per_block, norm_groups, schedule) -> Dict:
    return {
        "dataset": data.name,
        "n_images": int(data.x.shape[0]),
        "widths": [int(w) for w in widths],
        "seed": int(seed),
        "batch": int(batch),
        "lr": float(lr),
        "ema_decay": float(ema_decay),
        "layers_per_block": int(layers_per_block),
        "norm_groups": int(norm_groups),
        "schedule": schedule_to_dict(schedule),
        "sample_size": data.size,
        "channels": data.channels,
    }


def train_ladder(
    data: ImageData,
    out: str,
    *,
    widths: Sequence[int] = (4, 8, 16, 32),
    iters: int = 500,
    seed: int = 0,
    batch: int = 32,
    lr: float = 2e-3,
    ema_decay: float = 0.995,
    save_every: int = 100,
    schedule: Optional[VPSchedule] = None,
    layers_per_block: int = 1,
    norm_groups: int = 4,
    progress: Optional[Callable[[int], None]] = None,
    command: Optional[str] = None,
    loss_plot: bool = True,
    device: str | torch.device | None = None,
    objective: Optional[Objective] = None,
) -> UNetLadder:
    """Train (or resume training) a ladder of UNets of the given widths on ``data``; save it in ``out``.

    Args:
        data: images in [-1, 1], ``(n, channels, size, size)``.
        out: the ladder folder (see :mod:`.ladder`). If it already holds a ladder trained with the
            same settings, training resumes from each level's checkpoint; other settings are refused.
        widths: base widths, cheapest first (``block_out_channels = (w, 2w, 2w)``); nondecreasing.
        iters: iterations per level (a resumed run continues up to ``iters``).
        seed: seeds weights, batches and noise.
        batch, lr, ema_decay: mini-batch size, AdamW learning rate (linear warm-up over 50 iterations),
            EMA decay (0: no EMA; the sampling weights are then the raw weights).
        save_every: iterations between checkpoints.
        schedule: the VP schedule (default ``VPSchedule.linear()``), stored with the ladder.
        progress: called with 1 after every iteration.
        command: the command line, stored in ``model_index.json``.
        device: where the UNets train (default: the CPU). Batches, timesteps and noise are drawn on the
            CPU whatever the device (then moved), so every device sees the same data; checkpoints hold
            CPU tensors, and a run may resume on another device.
        objective: what the levels are built as and regress onto (default :class:`Objective`: the DDPM
            loss on ``build_unet`` models).

    Returns:
        The trained :class:`UNetLadder` (loaded back from ``out``).
    """
    schedule = VPSchedule.linear() if schedule is None else schedule
    widths = [int(w) for w in widths]
    if not widths or any(b < a for a, b in zip(widths, widths[1:])):
        raise ValueError(f"widths: expected nondecreasing widths, cheapest first, got {widths}")
    for name, v, lo in (("iters", iters, 0), ("batch", batch, 1), ("save_every", save_every, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    if not (lr > 0 and math.isfinite(lr)) or not (0 <= ema_decay < 1):
        raise ValueError(f"lr, ema_decay: expected lr > 0 and 0 <= ema_decay < 1, got {lr}, {ema_decay}")
    if data.size % 4:
        raise ValueError(f"data: image side {data.size} px is not a multiple of 4 (the UNets halve it twice)")
    settings = _settings(data, widths, seed, batch, lr, ema_decay, layers_per_block, norm_groups, schedule)
    objective = Objective() if objective is None else objective
    settings.update(objective.settings())
    device = torch.device("cpu" if device is None else device)

    index_path = os.path.join(out, INDEX)
    if os.path.exists(index_path):
        old = read_json(index_path).get("training", {})
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            details = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise ValueError(
                f"out: {out} holds a ladder trained with other settings ({details}); resume with the same "
                "settings or choose another --out"
            )
    elif os.path.isdir(out) and set(os.listdir(out)) - set(objective.files):
        raise ValueError(f"out: {out} exists, is not empty and holds no {INDEX}; refusing to write into it")

    # A killed run leaves the temporary files of its atomic writes behind; they are never checkpoints.
    remove_temporaries(out, *(os.path.join(out, f"level_{k + 1}") for k in range(len(widths))))
    shapes = dict(
        sample_size=data.size, channels=data.channels, layers_per_block=layers_per_block, norm_groups=norm_groups
    )
    spec = objective.conditioning_spec
    costs = [unet_flops(objective.build(w, **shapes), data.size, data.channels, spec) for w in widths]
    # Read every existing checkpoint before writing anything: a corrupt one stops the run with nothing overwritten.
    for level, width in enumerate(widths):
        unet = objective.build(width, **shapes)
        opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
        ema = {k: v.detach().clone() for k, v in unet.state_dict().items()} if ema_decay > 0 else None
        done, _ = _resume(os.path.join(out, f"level_{level + 1}"), unet, opt, ema)
        if done > iters:  # its weights have seen more iterations than this run would record
            raise ValueError(
                f"iters: level {level + 1} in {out} has already been trained for {done} iterations, more than the "
                f"{iters} asked for; pass iters >= {done} to keep training it, or choose another out folder"
            )
    index = UNetLadder(
        [objective.build(w, **shapes) for w in widths[:1]] * len(widths),
        widths,
        costs,
        schedule,
        {"conditioning": spec} if spec else None,
    ).index()
    index["training"] = dict(settings, iters=int(iters))
    if command:
        index["training"]["command"] = command
    write_json(index_path, index)

    trained = False
    for level, width in enumerate(widths):
        trained |= _train_level(
            data,
            os.path.join(out, f"level_{level + 1}"),
            level,
            width,
            costs[level],
            iters,
            seed,
            batch,
            lr,
            ema_decay,
            save_every,
            schedule,
            shapes,
            progress,
            device,
            objective,
        )
    stale = os.path.join(out, "calibration.json")
    if trained and os.path.exists(stale):  # it describes the old weights
        os.unlink(stale)
    if loss_plot:
        plot_losses(out)
    return load_ladder(out)


def _train_level(
    data,
    directory,
    level,
    width,
    cost,
    iters,
    seed,
    batch,
    lr,
    ema_decay,
    save_every,
    schedule,
    shapes,
    progress,
    device,
    objective,
):
    with torch.random.fork_rng(devices=[]):  # seed the initial weights without touching the caller's RNG
        torch.manual_seed(_seed(seed, level, 0xC0FFEE))
        unet = objective.build(width, **shapes)
    unet.to(device).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()} if ema_decay > 0 else None
    start, losses = _resume(directory, unet, opt, ema)
    if progress and start:  # a resumed bar counts the iterations done before, and ends at its total
        progress(min(start, iters))
    if start >= iters:
        # Finished earlier; rewrite the sampling weights in case a crash came between the
        # training state and them.
        save_level(directory, unet, width, cost, schedule, state_dict=ema)
        return False
    x_all = data.x.to(device)
    n, T = x_all.shape[0], schedule.num_train_timesteps
    alphas = schedule.alpha(schedule.time(torch.arange(T))).float()
    sigmas = schedule.sigma(schedule.time(torch.arange(T))).float()
    params = list(unet.parameters())
    for it in range(start, iters):
        g = torch.Generator().manual_seed(_seed(seed, level, it))
        idx = torch.randint(0, n, (batch,), generator=g)
        k = torch.randint(0, T, (batch,), generator=g)
        eps = torch.randn((batch, *x_all.shape[1:]), generator=g)
        # Drawn on the CPU (the same on every device), then moved: no-ops on the CPU.
        eps, a, s = eps.to(device), alphas[k].to(device), sigmas[k].to(device)
        x0 = x_all[idx.to(device)]
        xt = a.view(-1, 1, 1, 1) * x0 + s.view(-1, 1, 1, 1) * eps
        cond = {key: v.to(device) for key, v in objective.draw_conditioning(idx, g).items()}
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (it + 1) / WARMUP)
        kd = k.to(device)
        loss = torch.nn.functional.mse_loss(unet(xt, kd, **cond).sample, objective.target(xt, kd, eps, **cond))
        if not math.isfinite(float(loss.detach())):
            raise TrainingDiverged(_diverged_message(directory, level, width, it, lr))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if ema is not None:
            d = min(ema_decay, (1 + it) / (10 + it))
            with torch.no_grad():
                for key, v in unet.state_dict().items():
                    if v.dtype.is_floating_point:
                        ema[key].mul_(d).add_(v.detach(), alpha=1 - d)
                    else:
                        ema[key].copy_(v)
        done = it + 1
        if (done % save_every == 0 or done == iters) and not _finite_weights(unet, ema):
            raise TrainingDiverged(_diverged_message(directory, level, width, it, lr))
        if done % save_every == 0 or done == iters:
            _checkpoint(directory, unet, opt, ema, losses, done, width, cost, schedule)
        if progress:
            progress(1)
    return True


class TrainingDiverged(ValueError):
    """Training produced a NaN or Inf loss or weights; the last checkpoint written before it is kept."""


def _finite_weights(unet, ema) -> bool:
    tensors = list(unet.state_dict().values()) + (list(ema.values()) if ema is not None else [])
    return all(bool(torch.isfinite(v).all()) for v in tensors if v.dtype.is_floating_point)


def _diverged_message(directory, level, width, it, lr) -> str:
    path = os.path.join(directory, TRAIN_STATE + ".safetensors")
    kept = "no checkpoint of this level was written"
    if os.path.exists(path):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            kept = (
                f"the last good checkpoint (iteration {(f.metadata() or {}).get('iteration')}) is kept in {directory}"
            )
    return (
        f"training diverged: level {level + 1} (width {width}) has a NaN or Inf loss or weights at iteration "
        f"{it + 1} with learning rate {lr:g}; {kept}. Lower the learning rate"
    )


def _checkpoint(directory, unet, opt, ema, losses, iteration, width, cost, schedule):
    tensors = {f"model.{k}": v for k, v in unet.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.items()})
    for i, st in opt.state_dict()["state"].items():
        for key, v in st.items():
            tensors[f"optim.{i}.{key}"] = torch.as_tensor(v)
    tensors["losses"] = torch.tensor(losses, dtype=torch.float64)
    os.makedirs(directory, exist_ok=True)
    # Sampling weights first: the training state is what marks the iteration as done.
    save_level(directory, unet, width, cost, schedule, state_dict=ema)
    save_tensors(os.path.join(directory, TRAIN_STATE + ".safetensors"), tensors, metadata={"iteration": str(iteration)})
    write_json(
        os.path.join(directory, TRAIN_STATE + ".json"),
        {"iteration": iteration, "last_loss": losses[-1] if losses else None, "ema": ema is not None},
    )


def _resume(directory, unet, opt, ema):
    """Load a level's checkpoint into unet/opt/ema; returns (iteration, losses). (0, []) if none."""
    path = os.path.join(directory, TRAIN_STATE + ".safetensors")
    if not os.path.exists(path):
        return 0, []
    from safetensors import safe_open

    restart = (
        f"; to train this level again from scratch (its other levels are kept), delete {path} and "
        f"{os.path.join(directory, TRAIN_STATE + '.json')}"
    )
    try:
        tensors = load_tensors(path)
    except CheckpointError as e:
        raise CheckpointError(f"{e}{restart}") from None
    try:
        with safe_open(path, framework="pt") as f:
            iteration = int((f.metadata() or {})["iteration"])
    except Exception as e:
        raise CheckpointError(f"{path}: no iteration count in its metadata: {e}{restart}") from None
    try:
        unet.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
        if ema is not None:
            saved = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
            if set(saved) != set(ema):
                raise RuntimeError("EMA weights missing or of another model (was it trained with --ema 0?)")
            for k in ema:
                ema[k].copy_(saved[k])
        state: Dict[int, Dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, i, key = k.split(".", 2)
                state.setdefault(int(i), {})[key] = v
        opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: does not fit this level's model or optimizer: {e}{restart}") from None
    losses = tensors["losses"].tolist() if "losses" in tensors else []
    if len(losses) != iteration:
        raise CheckpointError(f"{path}: {len(losses)} losses stored for {iteration} iterations{restart}")
    return iteration, losses


def plot_losses(out: str, path: Optional[str] = None, window: int = 25) -> str:
    """A PNG of each level's training loss (running mean over ``window`` iterations); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = read_json(os.path.join(out, INDEX))
    path = path or os.path.join(out, "loss.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, w in zip(index["levels"], index["widths"]):
        f = os.path.join(out, name, TRAIN_STATE + ".safetensors")
        if not os.path.exists(f):
            continue
        losses = load_tensors(f)["losses"].numpy()
        if len(losses) == 0:
            continue
        m = min(window, len(losses))
        smooth = np.convolve(losses, np.ones(m) / m, mode="valid")
        ax.plot(np.arange(m, len(losses) + 1), smooth, label=f"{name} (width {w})")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"eps MSE (running mean of {window})")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("UNet ladder training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

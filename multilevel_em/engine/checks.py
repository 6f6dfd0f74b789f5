"""Finiteness checks shared by the solver and the layers above it (denoisers, pipelines).

A level that returns NaN or Inf (corrupt weights, an overflow) must stop a run with a message
naming the level, not return NaN samples.  These helpers make that check cheap and the
message uniform.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Union

import torch

__all__ = ["all_finite", "non_finite_error", "state_error", "tensor_version", "modified_input_error"]


def all_finite(x: torch.Tensor) -> bool:
    """Whether every entry of ``x`` (any shape, floating dtype) is finite, in one reduction in the common case.

    A NaN or an infinity makes the sum NaN or infinite, so a finite sum proves every entry
    finite; a non-finite sum (which finite entries can also give, by overflow) falls back to
    the exact elementwise test.  ``torch.isfinite(x).all()`` makes several elementwise
    passes: on small batches it cost more than all the rest of an ML-EM step's bookkeeping.
    """
    s = x.sum(dtype=torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x.sum()
    if math.isfinite(s.item()):
        return True
    return bool(torch.isfinite(x).all())


def non_finite_error(caller, outputs: Mapping[int, torch.Tensor], t: float) -> FloatingPointError:
    """The error to raise when a drift or eps estimate built from ``outputs`` is NaN or Inf.

    Args:
        caller: anything with ``caller.ladder.names`` (a :class:`~multilevel_em.engine.LevelEvaluator`).
        outputs: ``{j: output}`` of the 0-based levels evaluated at time ``t``, each of shape ``(rows, ...)``.
        t: the time of the evaluation (continuous units of the problem).

    Returns:
        A ``FloatingPointError`` naming the first level (lowest j) whose output is not finite,
        or, when all are finite, saying that the combined estimate is not.
    """
    for j in sorted(outputs):
        if not bool(torch.isfinite(outputs[j]).all()):
            return FloatingPointError(
                f"level {j + 1} ({caller.ladder.names[j]}) produced NaN or Inf at t={t:.6g}; "
                "pass check_finite=False to continue anyway"
            )
    return FloatingPointError(f"the drift estimate is NaN or Inf at t={t:.6g}; pass check_finite=False to continue")


def state_error(x: torch.Tensor, t: float) -> Optional[FloatingPointError]:
    """The error to raise when the levels were handed a non-finite state ``x`` (batch, ...) at time ``t``
    (x0 is checked up front, and every level's output before it enters the state, so the diffusion
    term put it there); None if x is finite."""
    if bool(torch.isfinite(x).all()):
        return None
    return FloatingPointError(
        f"the state is NaN or Inf at t={t:.6g}, with finite drifts so far: the diffusion term (diffusion=) produced it"
    )


def tensor_version(x) -> Optional[int]:
    """``x``'s version counter (which every in-place operation on it or on a view of it advances), or None where
    there is none to read: not a tensor, or an inference tensor (made under ``torch.inference_mode``)."""
    if not isinstance(x, torch.Tensor):
        return None
    try:
        return x._version
    except RuntimeError:  # inference tensors keep no version counter
        return None


def modified_input_error(level: str, what: str, t: Union[float, str, torch.Tensor, None] = None) -> ValueError:
    """The error to raise when ``level`` (e.g. "level 2 (unet-16)") modified its input ``what`` in place at time
    ``t`` (a number, a one-element tensor, or a phrase such as "timestep 981").

    Levels must treat their inputs as read-only: every level of a step (or of a model call) gets the
    same tensor, and the first step's state is the caller's own ``x0`` (or the pipeline's latents).
    """
    if isinstance(t, str):
        at = f" at {t}"
    else:
        try:
            at = f" at t={float(t):.6g}"
        except (TypeError, ValueError, RuntimeError):  # None, or a tensor of several times
            at = ""
    return ValueError(
        f"{level} modified its input {what} in place{at}; a level must not modify its inputs: every level of a "
        "step gets the same tensor (and the first step's is the caller's own), so the caller's data and the other "
        "levels' results would change. Compute out of place, or copy first (x = x.clone())"
    )

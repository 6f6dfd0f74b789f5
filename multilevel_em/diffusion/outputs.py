"""Unwrapping what models return and what they are called with, shared by the denoisers.

Diffusers models return an output object with ``.sample``, or ``(sample,)`` with
``return_dict=False``; plain models return a tensor.  A multilevel estimator draws its levels
once per call, so it needs the call's one time (or timestep), however it was given.  Both
:class:`~multilevel_em.diffusion.MultilevelDenoiser` (continuous t) and
:class:`~multilevel_em.diffusion.MultilevelModel` (diffusers timesteps) use these helpers.
"""

from __future__ import annotations

from numbers import Real
from typing import Optional

import torch

__all__ = ["model_output", "single_time"]


def model_output(out, label: Optional[str] = None) -> torch.Tensor:
    """The tensor of a model's output: the tensor itself, ``out.sample`` (a diffusers output), or
    the first element of a tuple or list.

    ``label`` (e.g. "level 2 (width 8)"): given, anything else raises TypeError starting with it;
    None, anything else is returned unchanged (the lenient form a model adapter uses).
    """
    if isinstance(out, torch.Tensor):
        return out
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor) or (label is None and sample is not None):
        return sample
    if isinstance(out, (tuple, list)) and out and (label is None or isinstance(out[0], torch.Tensor)):
        return out[0]
    if label is None:
        return out
    raise TypeError(f"{label}: expected a tensor, a diffusers output with .sample or a tuple, got {type(out).__name__}")


def single_time(t, *, name: str, why: str) -> float:
    """The one time of a call as a float: a number, a one-element tensor, or a (batch,) tensor of equal values.

    Args:
        t: the time or timestep of the call (a number, or a tensor of any shape holding one value).
        name: the argument's name, starting the error messages ("t", "timestep").
        why: the end of the ValueError raised for a tensor of different (or no) values.

    Raises:
        ValueError: ``f"{name}: {why}"`` for a tensor of different values or no values.
        TypeError: for a bool or a non-number.
    """
    if isinstance(t, torch.Tensor):
        flat = t.detach().reshape(-1)
        if flat.numel() == 0 or not bool((flat == flat[0]).all()):
            raise ValueError(f"{name}: {why}")
        return float(flat[0])
    if isinstance(t, bool) or not isinstance(t, Real):
        kind = "a float or a (batch,) tensor" if name == "t" else "a number or a tensor"
        raise TypeError(f"{name}: expected {kind}, got {type(t).__name__}")
    return float(t)

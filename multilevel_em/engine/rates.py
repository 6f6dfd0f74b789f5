"""Rates lambda_l and the firing probabilities p = min(1, lambda h) they give: the engine's one home.

A rate lambda_l (per unit time) belongs to correction l = 2..K of a ladder: on a step (or a model
call) standing for a span h of time, correction l fires with probability

    p_l = min(1, lambda_l(t) h)

(:func:`firing_probability`), so that ``E[B_l / p_l] = 1`` and the telescoping estimate stays
unbiased.  A rate is a number >= 0 or a callable of t returning one (:data:`Rate`);
:func:`check_rates` validates a sequence of them once, :func:`rate_value` one value at one time.

Every layer uses these: the solver's steps, :class:`~multilevel_em.diffusion.MultilevelDenoiser`
and :class:`~multilevel_em.diffusion.MultilevelModel` per call, and the calibration's cost and
variance sums (with arrays).  The rate *math* (expected costs, the search for the rate scale mu,
rate callables) lives in :mod:`multilevel_em.calibration.rates`.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch

from .._text import plural

__all__ = ["Rate", "check_rates", "evaluate_rates", "firing_probabilities", "firing_probability", "rate_value"]

#: A rate lambda_l for one level: a number (per unit time) or a callable of t.
Rate = Union[float, Callable[[float], float]]


def firing_probability(rate, span):
    """p = min(1, rate * span): the probability that a correction with ``rate`` (per unit time) fires
    on a step or call standing for ``span`` time.

    Numbers give a float; numpy arrays (any broadcastable shapes, e.g. rates (G, M, L - 1) times spans
    (M, 1)) give an array of the broadcast shape.  Both are dimensionless, in [0, 1] for rate, span >= 0.
    """
    if isinstance(rate, np.ndarray) or isinstance(span, np.ndarray):
        return np.minimum(1.0, rate * span)
    return min(1.0, rate * span)


def rate_value(j: int, r, t: Optional[float]) -> float:
    """Evaluate ``rates[j]`` (``r``: a number or a callable of t) at time ``t`` and check it is a finite
    number >= 0; TypeError/ValueError naming the rate (level j + 2) and the time otherwise.

    ``t`` None: ``r`` is a constant (callables are not evaluated then, so pass numbers only)."""
    v = r(t) if callable(r) else r
    try:
        v = float(v)
    except (TypeError, ValueError):
        at = "" if t is None else f" at t={t}"
        raise TypeError(f"rates[{j}] (level {j + 2}): expected a number, got {type(v).__name__}{at}") from None
    if not (math.isfinite(v) and v >= 0):
        at = "" if t is None else f" at t={t}"
        raise ValueError(f"rates[{j}] (level {j + 2}): expected a finite rate >= 0, got {v}{at}")
    return v


def evaluate_rates(rates: Sequence[Rate], t: float) -> List[float]:
    """The rates lambda_2..lambda_K at time t, validated (per unit time)."""
    return [rate_value(j, r, t) for j, r in enumerate(rates)]


def firing_probabilities(rates: Sequence[Rate], t: float, span: float) -> List[float]:
    """p_2..p_K = min(1, lambda_l(t) span) at time ``t`` for a step or call of ``span`` time (validated rates)."""
    return [firing_probability(lam, span) for lam in evaluate_rates(rates, t)]


def check_rates(rates, n_levels: int, t: Optional[float], *, missing: Optional[str] = None) -> list:
    """Validate ``rates`` for a ladder of ``n_levels``: a sequence of ``n_levels - 1`` rates, each a number
    >= 0 or a callable of t (evaluated once at ``t`` to fail early; ``t`` None checks numbers only).

    ``missing``: the ValueError message when ``rates`` is None.  Returns the rates as a list.
    """
    if rates is None:
        raise ValueError(
            missing
            or f"rates: expected {n_levels - 1} rates (lambda_2..lambda_{n_levels}, numbers or "
            "callables of t), got None"
        )
    if isinstance(rates, Real) or (isinstance(rates, torch.Tensor) and rates.ndim == 0) or callable(rates):
        raise TypeError(f"rates: expected a sequence of {n_levels - 1} rates (levels 2..{n_levels}), got one value")
    rates = list(rates)
    if len(rates) != n_levels - 1:
        raise ValueError(
            f"rates: expected {plural(n_levels - 1, 'rate')} (one for each of levels 2..{n_levels}), got {len(rates)}"
        )
    for j, r in enumerate(rates):
        if t is not None or not callable(r):
            rate_value(j, r, t)  # fail early on bad constants or callables
    return rates

"""The log-log fit every layer uses: cost ~ error^-gamma (no dependencies inside the package)."""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np


def loglog_slope(costs: Sequence[float], errors: Sequence[float]) -> Tuple[float, float]:
    """Least squares of log(cost) = gamma log(1/error) + c; returns (gamma, standard error).

    The standard error is nan with exactly 2 points (the line goes through both).
    """
    x = np.log(1.0 / np.asarray(errors, dtype=np.float64))
    y = np.log(np.asarray(costs, dtype=np.float64))
    sxx = float(((x - x.mean()) ** 2).sum())
    if sxx == 0.0:
        raise ValueError("fitting gamma: the levels used for the fit all have the same error")
    gamma = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    if len(x) < 3:
        return gamma, math.nan
    resid = y - (y.mean() + gamma * (x - x.mean()))
    return gamma, math.sqrt(float(resid @ resid) / (len(x) - 2) / sxx)

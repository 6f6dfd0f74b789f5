"""Shared helpers for the experiments: errors, Pareto fronts, slope fits, JSON output."""

from __future__ import annotations

import math
import os
import platform
from typing import Iterable, List, Sequence, Tuple

import torch

from .._fit import loglog_slope
from .._io import write_json  # noqa: F401  (re-exported for the benchmarks)

#: The shipped digits UNet ladder (the default ladder of the image benchmarks and of ``mlem demo``).
DIGITS_LADDER = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "images", "pretrained", "digits"))


def rms_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Root mean square over samples of the Euclidean error, ``sqrt(mean_b |x_b - ref_b|^2)``."""
    diff = (x - ref).reshape(x.shape[0], -1)
    return float(diff.pow(2).sum(1).mean().sqrt())


def pareto_front(points: Iterable[Tuple[float, float]]) -> List[Tuple[float, float]]:
    """The (cost, error) points not dominated by a cheaper-and-more-accurate one, by cost."""
    front, best = [], math.inf
    for cost, err in sorted(points):
        if err < best:
            front.append((cost, err))
            best = err
    return front


def fit_slope(costs: Sequence[float], errors: Sequence[float]) -> Tuple[float, float]:
    """Least-squares slope of log(cost) against log(1/error), with its standard error (>= 3 points)."""
    if len(costs) < 3:
        raise ValueError(f"fit_slope: expected at least 3 points, got {len(costs)}")
    return loglog_slope(costs, errors)


def em_cost_at(curve, error: float):
    """EM's cost to reach ``error``: log-log interpolation between the two EM runs (cost,
    error) that bracket it; None if no run is that accurate."""
    pts = sorted(curve)
    for (c0, e0), (c1, e1) in zip(pts, pts[1:]):
        if e0 >= error >= e1:
            if e0 == e1:
                return c0
            return math.exp(math.log(c0) + (math.log(c1) - math.log(c0)) * math.log(e0 / error) / math.log(e0 / e1))
    return pts[0][0] if pts and pts[0][1] <= error else None


class single_thread:
    """Context manager: run torch on one intra-op thread (small tensors: threads only add overhead)."""

    def __enter__(self):
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self._threads)
        return False


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU. Call around timed regions."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (from /proc/cpuinfo where there is one)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return name

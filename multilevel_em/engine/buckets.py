"""Padded sub-batches ("buckets"): a level sees only a few batch sizes.

ML-EM evaluates its correction levels on random sub-batches, so a level is called with many
different batch sizes.  Compiled code (CUDA graphs, shape-specialised compilers) pays per
distinct shape; :func:`bucketed` pads each sub-batch up to the next of a few fixed sizes
(copies of its last row), evaluates, and drops the padded rows.  The padded rows are real
work that the counted cost does not count: this pays only where a new shape costs more than
the extra rows (not for eager or TorchScript-traced CPU code, see multilevel_em/bench/wallclock.py, ``mlem bench wallclock``).
Results equal the unpadded call's up to float rounding (batched kernels may round
differently for different batch sizes).
"""

from __future__ import annotations

import bisect
from typing import Sequence

import torch

__all__ = ["bucketed", "Bucketed"]


class Bucketed:
    """``level`` evaluated on batches padded to the next size in ``sizes`` (see the module docstring).

    Args:
        level: a drift or eps model ``f(x, t)`` with ``x`` of shape ``(batch, ...)`` and ``t`` a
            float or a ``(batch,)`` tensor; returns ``(batch, ...)``.
        sizes: the bucket sizes (ints >= 1, any order); a batch larger than the largest runs unpadded.

    Attributes ``padded_rows`` (rows evaluated only for padding) and ``calls`` report the waste.
    """

    def __init__(self, level, sizes: Sequence[int]):
        if not callable(level):
            raise TypeError(f"level: expected a callable f(x, t), got {type(level).__name__}")
        sizes = list(sizes)
        if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"sizes: expected a non-empty sequence of ints >= 1, got {sizes!r}")
        self.level, self.sizes = level, sorted(set(sizes))
        self.padded_rows = 0
        self.calls = 0

    def bucket(self, m: int) -> int:
        """The batch size a batch of ``m`` rows is padded to (``m`` itself above the largest bucket)."""
        i = bisect.bisect_left(self.sizes, m)
        return self.sizes[i] if i < len(self.sizes) else m

    def __call__(self, x: torch.Tensor, t):
        m = x.shape[0]
        s = self.bucket(m)
        self.calls += 1
        if s == m or m == 0:
            return self.level(x, t)
        pad = s - m
        x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])])
        if isinstance(t, torch.Tensor) and t.ndim == 1 and t.shape[0] == m:
            t = torch.cat([t, t[-1:].expand(pad)])
        self.padded_rows += pad
        return self.level(x, t)[:m]

    def __repr__(self) -> str:
        return f"Bucketed({self.level!r}, sizes={self.sizes})"


def bucketed(level, sizes: Sequence[int]) -> Bucketed:
    """``level`` with its batches padded to the next of ``sizes`` (:class:`Bucketed`)."""
    return Bucketed(level, sizes)

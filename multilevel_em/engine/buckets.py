"""Padded sub-batches ("buckets"): a level sees only a few batch sizes.

ML-EM evaluates its correction levels on random sub-batches, so a level is called with many
different batch sizes.  Compiled code (CUDA graphs, shape-specialised compilers) pays per
distinct shape; :func:`bucketed` pads each sub-batch up to the next of a few fixed sizes
(copies of its last row), evaluates, and drops the padded rows.  The padded rows are real
work that the counted cost does not count: this pays only where a new shape costs more than
the extra rows (not for eager or TorchScript-traced CPU code, see multilevel_em/bench/wallclock.py, ``mlem bench wallclock``).
Results equal the unpadded call's up to float rounding (batched kernels may round
differently for different batch sizes).

This module is the one implementation of bucketing: :func:`bucket_sizes` (the sizes a batch's level calls
may take), :func:`next_bucket` (the size a sub-batch is padded to) serve ``draws="static"`` (:func:`multilevel_em.solve`), and :class:`Bucketed` wraps a level.
"""

from __future__ import annotations

import bisect
from typing import Optional, Sequence, Tuple

import torch

__all__ = ["bucketed", "Bucketed", "bucket_sizes", "check_bucket_sizes", "next_bucket", "MAX_BUCKETS"]

#: The default bucket set of :func:`bucket_sizes` has at most this many sizes: torch.compile's default
#: recompile limit (8 per compiled function), so that a compiled level can hold one graph per size.
MAX_BUCKETS = 8


def check_bucket_sizes(sizes, name: str = "buckets") -> Tuple[int, ...]:
    """``sizes`` as a sorted tuple of distinct ints >= 1; ValueError naming ``name`` otherwise."""
    try:
        sizes = list(sizes)
    except TypeError:
        raise ValueError(f"{name}: expected a non-empty sequence of ints >= 1, got {sizes!r}") from None
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"{name}: expected a non-empty sequence of ints >= 1, got {sizes!r}")
    return tuple(sorted(set(sizes)))


def bucket_sizes(batch: int, sizes: Optional[Sequence[int]] = None) -> Tuple[int, ...]:
    """The batch sizes a level call may take for a batch of ``batch`` rows: the sizes below ``batch``, and ``batch``.

    Args:
        batch: rows of the whole batch (an int >= 0); a level called on every row runs on ``batch`` rows.
        sizes: the bucket sizes (ints >= 1, any order); None: the powers of two below ``batch``, the largest
            ``MAX_BUCKETS - 1`` of them (a sub-batch of fewer rows than the smallest is padded up to it).

    Returns:
        The sorted sizes (rows): every sub-batch of m <= batch rows is padded to ``next_bucket(m, result)``.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
        raise ValueError(f"batch: expected an int >= 0, got {batch!r}")
    if sizes is None:
        below = [2**k for k in range(max(batch, 1).bit_length()) if 2**k < batch]
        below = below[-(MAX_BUCKETS - 1) :]
    else:
        below = [s for s in check_bucket_sizes(sizes) if s < batch]
    return tuple(below) + ((batch,) if batch else ())


def next_bucket(m: int, sizes: Sequence[int]) -> int:
    """The size a sub-batch of ``m`` rows is padded to: the smallest of the sorted ``sizes`` >= m (m itself above
    the largest, and for m = 0)."""
    if m <= 0:
        return m
    i = bisect.bisect_left(sizes, m)
    return sizes[i] if i < len(sizes) else m


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
        self.level, self.sizes = level, list(check_bucket_sizes(sizes, "sizes"))
        self.padded_rows = 0
        self.calls = 0

    def bucket(self, m: int) -> int:
        """The batch size a batch of ``m`` rows is padded to (``m`` itself above the largest bucket)."""
        return next_bucket(m, self.sizes)

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

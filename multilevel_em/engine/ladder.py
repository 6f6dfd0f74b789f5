"""A ladder of drift approximators f^1, ..., f^K of increasing accuracy and cost."""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional, Sequence

import torch

__all__ = ["Ladder", "Drift"]

#: A drift level: ``f(x, t) -> Tensor`` shaped like ``x`` (``x``: ``(batch, *state_shape)``,
#: ``t``: a float or a ``(batch,)`` tensor).  It must not modify ``x`` in place (see :class:`Ladder`).
Drift = Callable[[torch.Tensor, float], torch.Tensor]


class Ladder(Sequence):
    """An ordered sequence of drift approximators, cheapest first.

    Args:
        levels: callables ``f(x, t) -> Tensor`` shaped like ``x``; ``levels[-1]`` is the
            most accurate (the "top" level f^K, whose solution ML-EM is unbiased for).
        costs: relative cost of one evaluation for one sample, one per level; positive,
            finite and nondecreasing. Any unit works (FLOPs, seconds, parameters); results
            are also reported in top-level equivalents (cost / ``costs[-1]``).
        names: optional labels for reports (default ``"level 1"``, ...).

    Indexing follows Python (``ladder[0]`` is f^1); messages name levels 1-based as in
    the paper.

    What a level may do: read ``x`` and ``t`` and return a new tensor (or a view of a tensor of
    its own); it must not modify ``x`` in place.  Every level of a step gets the same ``x`` (the
    first step's is the caller's ``x0``), so an in-place change would alter the caller's data and
    what the next level sees.  The solver detects it (``x``'s version counter moved during the
    call: any in-place torch operation on ``x`` or a view of it, but not writes through
    ``x.data`` or ``x.numpy()``, nor on inference tensors) and raises ``ValueError`` naming the
    level.  A level may keep state of its own (counters, caches) as long as its output depends
    on ``(x, t)`` alone.
    """

    def __init__(self, levels: Sequence[Drift], costs: Sequence[float], names: Optional[Sequence[str]] = None):
        if callable(levels) and not isinstance(levels, (list, tuple, torch.nn.ModuleList)):
            raise TypeError("levels: expected a sequence of callables, got a single callable; wrap it as [f]")
        try:
            levels = tuple(levels)
        except TypeError:
            raise TypeError(f"levels: expected a sequence of callables, got {type(levels).__name__}") from None
        if not levels:
            raise ValueError("levels: expected at least one level, got an empty sequence")
        for i, f in enumerate(levels):
            if not callable(f):
                raise TypeError(f"levels[{i}] (level {i + 1}): expected a callable f(x, t), got {type(f).__name__}")
        try:
            costs = tuple(float(c) for c in costs)
        except (TypeError, ValueError):
            raise TypeError(f"costs: expected a sequence of numbers, got {costs!r}") from None
        if len(costs) != len(levels):
            raise ValueError(f"costs: expected {len(levels)} costs (one per level), got {len(costs)}")
        for i, c in enumerate(costs):
            if not (math.isfinite(c) and c > 0):
                raise ValueError(f"costs[{i}] (level {i + 1}): expected a positive finite cost, got {c}")
        for i in range(1, len(costs)):
            if costs[i] < costs[i - 1]:
                raise ValueError(
                    f"costs: expected nondecreasing costs (cheapest level first), but costs[{i}]={costs[i]} "
                    f"< costs[{i - 1}]={costs[i - 1]}"
                )
        if names is None:
            names = tuple(f"level {i + 1}" for i in range(len(levels)))
        else:
            names = tuple(str(n) for n in names)
            if len(names) != len(levels):
                raise ValueError(f"names: expected {len(levels)} names, got {len(names)}")
        self._levels = levels
        self.costs: tuple = costs
        self.names: tuple = names

    def __len__(self) -> int:
        return len(self._levels)

    def __getitem__(self, i):
        if isinstance(i, slice):
            idx = range(len(self))[i]
            return self.select(list(idx))
        return self._levels[i]

    def __iter__(self) -> Iterator[Drift]:
        return iter(self._levels)

    @property
    def top_cost(self) -> float:
        """Cost of one evaluation of the top level, the unit of "top-level equivalents"."""
        return self.costs[-1]

    def select(self, indices: Sequence[int]) -> "Ladder":
        """A sub-ladder with the given 0-based level indices (kept in increasing order)."""
        idx = sorted({range(len(self))[i] for i in indices})
        if not idx:
            raise ValueError("indices: expected at least one level")
        return Ladder([self._levels[i] for i in idx], [self.costs[i] for i in idx], [self.names[i] for i in idx])

    def __repr__(self) -> str:
        body = ", ".join(f"{n}: cost {c:g}" for n, c in zip(self.names, self.costs))
        return f"Ladder({body})"

"""Schedules of models: which levels each model call of a sampler uses, and how often each correction fires.

A sampler with N model calls (one per scheduler timestep) evaluates, at call n, the estimate

    F_n = f^{b_n} + sum_{l in S_n, l > b_n} (B_l / p_{n,l}) (f^l - f^{prev(l)})

over a sub-ladder S_n = (b_n < ... < k_n) of the K levels (0-based indices here, 1-based in
messages): b_n is the call's base level, k_n its top level, prev(l) the level below l in S_n and
B_l ~ Bernoulli(p_{n,l}) independently per image and correction.  E[F_n] = f^{k_n}: the call is
unbiased for its own top level (the telescoping sum over S_n collapses), so a call with
k_n = K - 1 is unbiased for the top model and one with k_n < K - 1 is a deterministic switch to a
cheaper model (biased).  Special cases:

- the top model alone: S_n = (K-1,) at every call;
- T-Stitch / base + refiner switching: S_n = (j,) for the first calls, (K-1,) after;
- ML-EM: S_n = (0, ..., K-1) at every call with p_{n,l} from the rates;
- hybrids: a cheaper level alone while errors fade, ML-EM corrections after.

:class:`CallSchedule` holds one such choice for a fixed number of calls; it is validated
completely when built (and when loaded from JSON), and :func:`schedule_estimate` evaluates one call
of it through the engine's one estimator (:func:`~multilevel_em.engine.telescoping_estimate`) on
the sub-ladder.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from numbers import Real
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .ladder import Ladder
from .solver import LevelEvaluator, telescoping_estimate

__all__ = ["CallSchedule", "SubLadderEvaluator", "schedule_estimate"]


def _level_tuple(levels, n: int, K: int) -> Tuple[int, ...]:
    where = f"levels[{n}] (call {n + 1})"
    if isinstance(levels, (Real, str, bytes)) or isinstance(levels, bool):
        raise TypeError(f"{where}: expected a sequence of 0-based level indices, got {levels!r}")
    try:
        levels = list(levels)
    except TypeError:
        raise TypeError(f"{where}: expected a sequence of 0-based level indices, got {type(levels).__name__}") from None
    if not levels:
        raise ValueError(f"{where}: expected at least one level")
    out = []
    for j in levels:
        if isinstance(j, bool):
            raise TypeError(f"{where}: expected integer level indices, got {j!r}")
        try:
            j = operator.index(j)
        except TypeError:
            raise TypeError(f"{where}: expected integer level indices, got {j!r}") from None
        if not 0 <= j < K:
            raise ValueError(f"{where}: level index {j} is outside the ladder (0-based indices 0..{K - 1}, {K} levels)")
        out.append(j)
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"{where}: expected increasing level indices (base first, the call's top last), got {out}")
    return tuple(out)


def _probability_tuple(probs, n: int, count: int) -> Tuple[float, ...]:
    where = f"probabilities[{n}] (call {n + 1})"
    if isinstance(probs, (Real, str, bytes)):
        raise TypeError(f"{where}: expected a sequence of {count} probabilities, got {probs!r}")
    try:
        probs = [float(p) for p in probs]
    except (TypeError, ValueError):
        raise TypeError(f"{where}: expected a sequence of {count} numbers, got {probs!r}") from None
    if len(probs) != count:
        raise ValueError(
            f"{where}: expected {count} probabilities (one per correction above the call's base level), got {len(probs)}"
        )
    for p in probs:
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise ValueError(f"{where}: expected probabilities in [0, 1], got {p}")
    return tuple(probs)


@dataclass(frozen=True)
class CallSchedule:
    """Which levels each of N model calls uses, and each correction's firing probability (module docstring).

    Args:
        levels: one entry per call: the call's sub-ladder as increasing 0-based level indices, its base
            level first and its top level last (e.g. ``(3,)`` the top of a 4-level ladder alone, ``(0, 3)``
            the cheapest level corrected towards the top, ``(0, 1, 2, 3)`` full ML-EM).
        probabilities: one entry per call: p for each correction of the call's sub-ladder, in [0, 1] (0: never fires)
            (``len(levels[n]) - 1`` numbers; an empty tuple for a single-level call).
        num_levels: K, the number of levels of the ladder the schedule is for.
        name: a label for reports (``"top alone"``, ``"switch"``, ``"ML-EM"``, ...).
    """

    levels: Tuple[Tuple[int, ...], ...]
    probabilities: Tuple[Tuple[float, ...], ...]
    num_levels: int
    name: str = "schedule"

    def __post_init__(self):
        K = self.num_levels
        if isinstance(K, bool) or not isinstance(K, int) or K < 1:
            raise ValueError(f"num_levels: expected an integer >= 1, got {K!r}")
        if isinstance(self.levels, (str, bytes)) or not hasattr(self.levels, "__len__"):
            raise TypeError(
                f"levels: expected a sequence with one sub-ladder per call, got {type(self.levels).__name__}"
            )
        if isinstance(self.probabilities, (str, bytes)) or not hasattr(self.probabilities, "__len__"):
            raise TypeError(
                f"probabilities: expected a sequence with one entry per call, got {type(self.probabilities).__name__}"
            )
        if len(self.levels) < 1:
            raise ValueError("levels: expected at least one call")
        if len(self.probabilities) != len(self.levels):
            raise ValueError(
                f"probabilities: expected one entry per call ({len(self.levels)} calls), got {len(self.probabilities)}"
            )
        levels = tuple(_level_tuple(s, n, K) for n, s in enumerate(self.levels))
        probs = tuple(_probability_tuple(p, n, len(s) - 1) for n, (s, p) in enumerate(zip(levels, self.probabilities)))
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "probabilities", probs)
        object.__setattr__(self, "name", str(self.name))

    # ------------------------------------------------------------------ the usual schedules

    @classmethod
    def top_alone(cls, calls: int, num_levels: int) -> "CallSchedule":
        """The top model at every one of ``calls`` calls (what a stock pipeline runs)."""
        _check_calls(calls)
        return cls(((num_levels - 1,),) * calls, ((),) * calls, num_levels, "top alone")

    @classmethod
    def switch(cls, calls: int, num_levels: int, level: int, fraction: float) -> "CallSchedule":
        """0-based ``level`` alone for the first ``round(fraction * calls)`` calls, the top model after
        (T-Stitch's schedule: the small model first; SDXL's base + refiner is the same with the roles of
        the two models' quality swapped). Biased at the switched calls."""
        _check_calls(calls)
        if not (isinstance(fraction, Real) and 0.0 <= float(fraction) <= 1.0):
            raise ValueError(f"fraction: expected a number in [0, 1], got {fraction!r}")
        first = int(round(float(fraction) * calls))
        levels = ((level,),) * first + ((num_levels - 1,),) * (calls - first)
        return cls(levels, ((),) * calls, num_levels, f"level {level + 1} for {first} of {calls} calls")

    @classmethod
    def mlem(cls, probabilities: Sequence[Sequence[float]], num_levels: int, levels: Optional[Sequence[int]] = None):
        """ML-EM at every call: ``probabilities[n]`` are p for the corrections of the sub-ladder ``levels``
        (0-based, with the top level; default all K levels) at call n. A probability of 1 fires the
        correction at every call."""
        K = num_levels
        sub = tuple(range(K)) if levels is None else tuple(levels)
        probabilities = list(probabilities)
        return cls((sub,) * len(probabilities), tuple(tuple(p) for p in probabilities), K, "ML-EM")

    # ------------------------------------------------------------------ reading it

    @property
    def calls(self) -> int:
        """N, the number of model calls the schedule is for."""
        return len(self.levels)

    @property
    def biased_calls(self) -> List[int]:
        """0-based calls whose top level is below the ladder's top (deterministic switches)."""
        return [n for n, s in enumerate(self.levels) if s[-1] != self.num_levels - 1]

    def expected_evaluations(self) -> List[List[float]]:
        """Expected evaluations per image of each level at each call, ``[call][level]``: level j of a call's
        sub-ladder runs on an image when the correction that ends at j or the one that starts at j fires
        (the base always), the draws being independent."""
        out = []
        for s, p in zip(self.levels, self.probabilities):
            row = [0.0] * self.num_levels
            fire = (1.0,) + p  # the base "fires" always
            for i, j in enumerate(s):
                above = p[i] if i < len(p) else 0.0  # the correction from s[i] to s[i + 1]
                row[j] = 1.0 - (1.0 - fire[i]) * (1.0 - above)
            out.append(row)
        return out

    def expected_cost(self, costs: Sequence[float]) -> float:
        """Expected cost per image of the whole schedule in top-level equivalents, for per-level ``costs``
        (any unit, the top level's last)."""
        costs = [float(c) for c in costs]
        if len(costs) != self.num_levels:
            raise ValueError(f"costs: expected {self.num_levels} costs (one per level), got {len(costs)}")
        total = sum(e * c for row in self.expected_evaluations() for e, c in zip(row, costs))
        return total / costs[-1]

    def check_calls(self, calls: int, what: str = "the sampler") -> None:
        """Raise unless the schedule is for ``calls`` model calls, naming both counts."""
        if calls != self.calls:
            raise ValueError(
                f"schedule: made for {self.calls} model calls, but {what} makes {calls}; "
                f"build a schedule of {calls} calls (or run {self.calls} inference steps)"
            )

    def check_ladder(self, num_levels: int) -> None:
        """Raise unless the schedule is for a ladder of ``num_levels`` levels."""
        if num_levels != self.num_levels:
            raise ValueError(f"schedule: made for a ladder of {self.num_levels} levels, but this one has {num_levels}")

    def to_dict(self) -> Dict:
        return {
            "name": self.name,
            "num_levels": self.num_levels,
            "levels": [list(s) for s in self.levels],
            "probabilities": [list(p) for p in self.probabilities],
        }

    @classmethod
    def from_dict(cls, d: Dict) -> "CallSchedule":
        """The inverse of :meth:`to_dict`, validating every field."""
        if not isinstance(d, dict):
            raise TypeError(f"schedule: expected a JSON object, got {type(d).__name__}")
        missing = [k for k in ("num_levels", "levels", "probabilities") if k not in d]
        if missing:
            raise ValueError(f"schedule: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(d) - {"name", "num_levels", "levels", "probabilities"})
        if unknown:
            raise ValueError(f"schedule: unknown field(s) {', '.join(unknown)}")
        return cls(d["levels"], d["probabilities"], d["num_levels"], d.get("name", "schedule"))

    def describe(self) -> str:
        """One line: the schedule's name, calls and which calls are switched."""
        b = self.biased_calls
        tail = "" if not b else f"; {len(b)} switched call(s), biased towards a cheaper level"
        return f"{self.name}: {self.calls} calls{tail}"


def _check_calls(calls) -> None:
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
        raise ValueError(f"calls: expected an integer >= 1, got {calls!r}")


class SubLadderEvaluator:
    """The levels ``indices`` (0-based, increasing) of an evaluator's ladder, seen as a ladder of their own:
    ``sub(i, x, t, rows)`` is ``evaluator(indices[i], x, t, rows)``, so the wrapped evaluator counts the
    evaluations under the real level indices."""

    def __init__(self, evaluator: LevelEvaluator, indices: Sequence[int]):
        self.inner = evaluator
        self.indices = tuple(indices)
        self.ladder: Ladder = evaluator.ladder.select(self.indices)

    def __call__(self, i: int, x: torch.Tensor, t: float, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.inner(self.indices[i], x, t, rows)


def schedule_estimate(
    schedule: CallSchedule,
    call: int,
    evaluator: LevelEvaluator,
    x: torch.Tensor,
    t: float,
    **kwargs,
) -> torch.Tensor:
    """One draw of call ``call``'s estimate (0-based): :func:`~multilevel_em.engine.telescoping_estimate` on the
    call's sub-ladder, unbiased for that call's top level. ``kwargs``: ``draws``, ``generator``,
    ``check_finite``, ``buckets`` as there. Shape: the levels' output shape, ``(batch, *out_shape)``."""
    schedule.check_ladder(len(evaluator.ladder))
    if not 0 <= call < schedule.calls:
        raise ValueError(
            f"call: expected 0..{schedule.calls - 1} (the schedule has {schedule.calls} calls), got {call}"
        )
    levels = schedule.levels[call]
    sub = evaluator if levels == tuple(range(len(evaluator.ladder))) else SubLadderEvaluator(evaluator, levels)
    return telescoping_estimate(sub, x, t, schedule.probabilities[call], **kwargs)

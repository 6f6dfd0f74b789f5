"""Euler-Maruyama (EM) and Multilevel Euler-Maruyama (ML-EM) on a drift ladder.

For dX = f(X, t) dt + g dW on a uniform grid t_n = t0 + n h, EM with level L is

    X_{n+1} = X_n + h f^L(X_n, t_n) + g (W(t_{n+1}) - W(t_n)),

and ML-EM replaces f^L by the randomized telescoping estimate (docs/method.md, "The randomized telescoping sum")

    F_n = f^1 + sum_{l=2..K} (B_{n,l} / p_{n,l}) (f^l - f^{l-1}),   B_{n,l} ~ Bernoulli(p_{n,l}),

with p_{n,l} = min(1, lambda_l(t_n) h), so that E[F_n | X_n] = f^K(X_n, t_n).  On a step,
each needed level ({1} and {l, l-1} for every fired l) is evaluated once, and with
``draws="per_sample"`` (or ``"exact"``, ``"static"``) only on the rows of the batch that need it.

``draws="static"`` draws the same independent B_{n,l} as ``"per_sample"`` (row b fires with
probability exactly p_{n,l}, weighted 1 / p_{n,l}), but on the host, so the row counts are known
before any level runs: each sub-batch is padded to a bucket size (:mod:`.buckets`), the row
indices are copied to the device asynchronously, and no level call waits for the device.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import math
import warnings
from array import array
from dataclasses import dataclass, field
from numbers import Real
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from .brownian import BrownianPath
from .buckets import bucket_sizes, check_bucket_sizes, next_bucket
from .checks import all_finite, modified_input_error, non_finite_error, state_error, tensor_version
from .ladder import Ladder
from .random import Generators, check_generators, is_per_sample, rand
from .rates import Rate, check_rates, evaluate_rates, firing_probabilities

__all__ = [
    "solve",
    "Solution",
    "StepProbabilities",
    "Rate",
    "resolve_diffusion",
    "evaluate_rates",
    "LevelEvaluator",
    "telescoping_estimate",
    "check_buckets",
]

Diffusion = Union[None, float, Callable]


class StepProbabilities(collections.abc.Sequence):
    """The probabilities p_2..p_K of each step of an ML-EM run, stored flat as float64 (``array('d')``).

    ``probs[n]`` is step n's list ``[p_2, ..., p_K]``; it compares equal to a list of such lists.
    (A list of lists held ~130 bytes per step for 3 levels; this holds 16.)
    """

    def __init__(self, width: int):
        self._width = width
        self._flat = array("d")

    def extend(self, rows: Sequence[Sequence[float]]) -> None:
        for row in rows:
            self._flat.extend(row)

    def __len__(self) -> int:
        return len(self._flat) // self._width if self._width else 0

    def __getitem__(self, n):
        if isinstance(n, slice):
            return [self[i] for i in range(len(self))[n]]
        n = range(len(self))[n]
        return self._flat[n * self._width : (n + 1) * self._width].tolist()

    def __eq__(self, other) -> bool:
        if not isinstance(other, collections.abc.Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == list(b) for a, b in zip(self, other))

    __hash__ = None

    def __repr__(self) -> str:
        return f"StepProbabilities({len(self)} steps x {self._width})"


@dataclass
class Solution:
    """The result of :func:`solve`.

    Attributes:
        x: final state, shape ``(batch, *state_shape)``.
        ts: saved times, shape ``(n_saved,)`` (float64), or None when ``save_every`` was None.
        xs: saved states, shape ``(n_saved, batch, *state_shape)``, or None.
        evaluations: sample-evaluations per level (level l evaluated on m samples counts m).
        costs: the ladder's cost of one evaluation per level.
        batch_size: number of samples.
        steps: number of steps.
        method: "em" or "mlem".

    ``probabilities`` (ML-EM): p_2..p_K of every step, ``probabilities[n]`` a list (a
    :class:`StepProbabilities`, stored as float64, 8 bytes per value).

    The cost actually spent: :attr:`cost_per_sample` (ladder cost units per sample; formerly
    ``cost``, still readable, deprecated) and :attr:`top_equivalents` (evaluations of the top
    level per sample).
    """

    x: torch.Tensor
    ts: Optional[torch.Tensor]
    xs: Optional[torch.Tensor]
    evaluations: tuple
    costs: tuple
    batch_size: int
    steps: int
    method: str
    probabilities: Optional[Sequence[List[float]]] = field(default=None, repr=False)

    @property
    def cost_per_sample(self) -> float:
        """Mean cost per sample, in the ladder's cost units (sum_l evaluations_l costs_l / batch_size)."""
        return sum(e * c for e, c in zip(self.evaluations, self.costs)) / max(self.batch_size, 1)

    @property
    def cost(self) -> float:
        """Deprecated: :attr:`cost_per_sample` (mean cost per sample, in the ladder's cost units)."""
        warnings.warn(
            "Solution.cost is deprecated; read Solution.cost_per_sample (ladder cost units per sample) "
            "or Solution.top_equivalents",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.cost_per_sample

    @property
    def top_equivalents(self) -> float:
        """Mean cost per sample in evaluations of the top level (EM with N steps: N)."""
        return self.cost_per_sample / self.costs[-1]

    def to_dict(self) -> dict:
        """Cost report as plain JSON-serialisable data (no tensors)."""
        return {
            "method": self.method,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "evaluations": list(self.evaluations),
            "costs": list(self.costs),
            "cost": self.cost_per_sample,  # the key stays "cost": reports written before the rename read the same
            "top_equivalents": self.top_equivalents,
        }


# ----------------------------------------------------------------------------- validation


def _check_time(name: str, t) -> float:
    if isinstance(t, bool) or not isinstance(t, (Real, torch.Tensor)):
        raise TypeError(f"{name}: expected a number, got {type(t).__name__}")
    t = float(t)
    if not math.isfinite(t):
        raise ValueError(f"{name}: expected a finite time, got {t}")
    return t


def _check_positive_int(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {v!r}")
    if v < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {v}")
    return v


def _check_rates(rates, n_levels: int, t0: float) -> list:
    return check_rates(
        rates,
        n_levels,
        t0,
        missing=(
            "rates: method='mlem' needs the rates lambda_2..lambda_K (numbers or callables of t); "
            "use multilevel_em.calibrate(...).rates(mu) to choose them, or method='em'"
        ),
    )


def resolve_diffusion(diffusion: Diffusion) -> Optional[Callable[[torch.Tensor, float], object]]:
    """Normalise ``diffusion`` to ``g(x, t)`` (or None for an ODE)."""
    if diffusion is None:
        return None
    if isinstance(diffusion, (Real, torch.Tensor)) and not isinstance(diffusion, bool):
        if isinstance(diffusion, Real):
            if not math.isfinite(float(diffusion)):
                raise ValueError(f"diffusion: expected a finite number, got {diffusion}")
        return lambda x, t: diffusion
    if not callable(diffusion):
        raise TypeError(f"diffusion: expected None, a number, g(t) or g(x, t), got {type(diffusion).__name__}")
    try:
        params = [
            p
            for p in inspect.signature(diffusion).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
        n_args = len(params)
    except (TypeError, ValueError):
        n_args = 1
    if n_args >= 2:
        return diffusion
    return lambda x, t: diffusion(t)


def _check_diffusion_shape(gx: torch.Tensor, x: torch.Tensor, t: float) -> None:
    """ValueError naming ``diffusion`` unless g(x, t) (a tensor) broadcasts to the state's shape without changing it."""
    try:
        ok = torch.broadcast_shapes(gx.shape, x.shape) == x.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"diffusion: g(x, t) returned shape {tuple(gx.shape)} at t={t:.6g}, which does not broadcast to the "
            f"state's shape {tuple(x.shape)}; it multiplies the Brownian increment elementwise (additive or diagonal "
            "noise): return a number or a tensor that broadcasts to (batch, *state_shape)"
        )


# ----------------------------------------------------------------------------- the solver


class LevelEvaluator:
    """Evaluates a ladder's levels on (sub-)batches, checks each level's output (shape, dtype,
    device) on first use and counts sample-evaluations per level in ``evaluations``.

    ``evaluator(j, x, t, rows)`` returns ``ladder[j](x, t)`` (0-based j); ``x0`` fixes the expected
    dtype and device.  A level must not modify ``x`` in place (:class:`~multilevel_em.Ladder`): the
    evaluator compares x's version counter before and after the call and raises naming the level.  ``rows`` says which rows of the whole batch ``x`` holds: None (all of
    them, in order) or an increasing index tensor (``draws="static"``: nondecreasing, the last row repeated
    up to the bucket size); the plain evaluator ignores it, subclasses
    that must slice per-row inputs alongside ``x`` (the conditioning of a diffusers model) override
    :meth:`evaluate`.  Subclasses whose levels return another per-row shape than the state's
    (telescoping_estimate allows it; :func:`solve` does not) override :meth:`check_output`.
    """

    def __init__(self, ladder: Ladder, x0: torch.Tensor):
        self.ladder = ladder
        self._levels = tuple(ladder)
        self.evaluations = [0] * len(ladder)
        self._checked = [False] * len(ladder)
        self._like = (x0.dtype, x0.device)

    def __call__(self, j: int, x: torch.Tensor, t: float, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        version = tensor_version(x)
        out = self.evaluate(j, x, t, rows)
        if version is not None and x._version != version:
            raise modified_input_error(f"level {j + 1} ({self.ladder.names[j]})", "x", t)
        # Checked at every call (a few attribute reads): a level whose output changes shape or dtype
        # later in a run is named here, not by a broadcasting error further on.
        self.check_output(j, x, out)
        self._checked[j] = True
        self.evaluations[j] += x.shape[0]
        return out

    def evaluate(self, j: int, x: torch.Tensor, t: float, rows: Optional[torch.Tensor]) -> torch.Tensor:
        """Level j (0-based) on the rows ``x`` (``rows`` of the whole batch, None: all)."""
        return self._levels[j](x, t)

    def check_output(self, j: int, x: torch.Tensor, out) -> None:
        """Raise naming the level unless ``out`` is a tensor of x's shape, dtype and device."""
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"level {j + 1} ({self.ladder.names[j]}): expected a Tensor, got {type(out).__name__}")
        if out.shape != x.shape:
            raise ValueError(
                f"level {j + 1} ({self.ladder.names[j]}): output shape {tuple(out.shape)} differs from "
                f"the state's shape {tuple(x.shape)}"
            )
        if (out.dtype, out.device) != self._like:
            raise TypeError(
                f"level {j + 1} ({self.ladder.names[j]}): output dtype/device {out.dtype}/{out.device} differs "
                f"from the state's {self._like[0]}/{self._like[1]}"
            )


#: The most steps :func:`solve` takes: grid times t0 + n h stay distinct in float64, and the default Brownian
#: path's depth (ceil(log2 steps) + 1) stays within its 52 levels.
MAX_STEPS = 2**51
#: The ways of drawing the level variables B_{n,l} (see :func:`solve`).
DRAWS = ("per_sample", "shared", "exact", "static")
#: Rows selector meaning "every row of the batch" (no gather or scatter needed).
_ALL = "all"
#: ML-EM draws the Bernoulli variables of about this many (steps x levels x samples) at a
#: time (8 MiB of float64 uniforms): large batches still get several steps per draw.
_DRAWS_PER_CHUNK = 1 << 20


class _DrawPlan(collections.abc.Sequence):
    """The draws of a run of steps, kept compact: ``plan[n]`` is step n's ``(fired, needed)`` (see :func:`_plan_draws`).

    Per (step, mask) only the row count is stored (``counts``, flat, W per step) and the firing rows of all masks
    one after another in one index tensor (``cols``); step n's selectors are made when the step asks for them.
    (Making them for a whole run up front held a few hundred bytes of Python objects per step: ~0.5 GB for a
    run of 262,144 steps, the run length of a batch of 2.)
    """

    def __init__(
        self, counts: List[int], width: int, batch: int, cols: Optional[torch.Tensor], starts: Optional[List[int]]
    ):
        # counts[n * width + k]: rows of mask k at step n; starts[n]: where step n's rows begin in cols
        self._counts, self._width, self._batch, self._cols, self._starts = counts, width, batch, cols, starts
        self._k1 = (width + 1) // 2

    def __len__(self) -> int:
        return len(self._counts) // self._width

    def __getitem__(self, n: int) -> tuple:
        n = range(len(self))[n]
        W, K1, batch = self._width, self._k1, self._batch
        cn = self._counts[n * W : (n + 1) * W]
        sel = []
        at = self._starts[n] if self._cols is not None else 0
        for c in cn:
            if c == 0:
                sel.append(None)
            elif c == batch:
                sel.append(_ALL)
            else:
                sel.append(self._cols[at : at + c])
            if self._cols is not None:
                at += c
        fired = sel[:K1]
        return fired, [_ALL] + sel[K1:] + [fired[-1]]


class _Padded:
    """``draws="static"``: the ``count`` rows of a sub-batch (``rows``, increasing) and the same indices padded to
    a bucket size (``index``: ``rows`` then copies of its last entry), both views of one device tensor."""

    __slots__ = ("index", "count")

    def __init__(self, index: torch.Tensor, count: int):
        self.index, self.count = index, count

    @property
    def rows(self) -> torch.Tensor:
        return self.index[: self.count]


def _unpadded(sel):
    """A selector of :func:`_plan_draws` with any padding dropped (None, ``_ALL`` or an index tensor)."""
    return sel.rows if isinstance(sel, _Padded) else sel


class _StaticPlan(collections.abc.Sequence):
    """``draws="static"``: a run of steps' draws, as :class:`_DrawPlan` (``plan[n]`` is step n's ``(fired, needed)``)
    but with :class:`_Padded` selectors: per (step, mask) the row count and its bucket are host ints."""

    def __init__(self, counts: List[int], padded: List[int], width: int, batch: int, index: Optional[torch.Tensor]):
        self._counts, self._padded, self._width, self._batch, self._index = counts, padded, width, batch, index
        self._k1 = (width + 1) // 2
        starts, at = [], 0
        for n in range(len(counts) // width):
            starts.append(at)
            at += sum(padded[n * width : (n + 1) * width])
        self._starts = starts

    def __len__(self) -> int:
        return len(self._counts) // self._width

    def __getitem__(self, n: int) -> tuple:
        n = range(len(self))[n]
        W, K1 = self._width, self._k1
        sel, at = [], self._starts[n]
        for c, s in zip(self._counts[n * W : (n + 1) * W], self._padded[n * W : (n + 1) * W]):
            if c == 0:
                sel.append(None)
            elif c == self._batch:
                sel.append(_ALL)
            else:
                sel.append(_Padded(self._index[at : at + s], c))
            at += s
        fired = sel[:K1]
        return fired, [_ALL] + sel[K1:] + [fired[-1]]


@functools.lru_cache(maxsize=64)
def _bucket_table(batch: int, sizes: tuple) -> torch.Tensor:
    """``table[m]``: the padded size of a sub-batch of m rows (0 for m = 0 and m = batch: no index is needed)."""
    return torch.tensor([0] + [next_bucket(m, sizes) for m in range(1, batch)] + [0], dtype=torch.int64)


def _host_generators(generator: Generators) -> None:
    """``draws="static"`` draws on the host: None, a CPU generator or a list of them (ValueError otherwise)."""
    gens = generator if is_per_sample(generator) else [generator]
    for g in gens:
        if g is not None and g.device.type != "cpu":
            raise ValueError(
                f"generator: draws='static' draws its levels on the host, so it needs a CPU torch.Generator "
                f"(or None: torch's default CPU generator), got one on {g.device}"
            )


def _plan_static(
    probs: List[List[float]], batch: int, generator: Generators, device: torch.device, sizes: Sequence[int]
) -> _StaticPlan:
    """``draws="static"``: B_{n,l} ~ Bernoulli(p_{n,l}), independent over steps, levels and rows, drawn on the host.

    The uniforms are those ``draws="per_sample"`` draws from a CPU generator (float64, the same numbers for the
    same generator), so every row fires with probability exactly p_{n,l} and the joint law is per-sample draws'.
    Each sub-batch (the rows of a fired or needed mask, as in :func:`_plan_draws`) of 0 < m < batch rows is
    padded to ``next_bucket(m, sizes)`` rows by repeating its last row; the padded indices of the whole run go
    to the device in one asynchronous copy (pinned memory on CUDA).  Nothing here reads a device tensor.
    """
    C, K1 = len(probs), len(probs[0])
    W = 2 * K1 - 1
    _host_generators(generator)
    if is_per_sample(generator):
        u = rand((batch, C, K1), generator, dtype=torch.float64, device="cpu").permute(1, 2, 0)
    else:
        u = torch.rand((C, K1, batch), generator=generator, dtype=torch.float64)
    fired = u < torch.tensor(probs, dtype=torch.float64).unsqueeze(2)
    mask = torch.cat([fired, fired[:, :-1] | fired[:, 1:]], dim=1).view(C * W, batch)  # (C W, batch), on the host
    counts_t = mask.sum(1)
    padded_t = _bucket_table(batch, tuple(sizes))[counts_t] if batch else torch.zeros_like(counts_t)
    counts, padded = counts_t.tolist(), padded_t.tolist()
    total = sum(padded)
    index = None
    if total:
        partial = (counts_t > 0) & (counts_t < batch)
        cols = mask[partial].nonzero(as_tuple=True)[1]  # rows of the partial masks, mask by mask, increasing
        c_part, s_part = counts_t[partial], padded_t[partial]
        start = torch.cumsum(c_part, 0) - c_part  # where each mask's rows begin in cols
        which = torch.repeat_interleave(torch.arange(len(s_part)), s_part)
        offset = torch.arange(total) - torch.repeat_interleave(torch.cumsum(s_part, 0) - s_part, s_part)
        index = cols[start[which] + torch.minimum(offset, c_part[which] - 1)]
        if device.type == "cuda":
            index = index.pin_memory().to(device, non_blocking=True)
        elif device.type != "cpu":
            index = index.to(device)
    return _StaticPlan(counts, padded, W, batch, index)


def _plan_draws(
    probs: List[List[float]], batch: int, draws: str, generator: Generators, device: torch.device
) -> _DrawPlan:
    """Draw B_{n,l} ~ Bernoulli(p_{n,l}) for a run of steps; per step, return (fired, needed).

    ``probs[n][l - 2]`` is p_l at step n of the run.  ``fired[l - 2]`` selects the rows where
    the correction of level l fired, ``needed[j]`` the rows where level j + 1 must be
    evaluated (level 1: all rows; level l < K: where correction l or l + 1 fired; level K:
    where correction K fired), each as None (no row), ``_ALL`` or an increasing index tensor.
    The draws do not depend on the state, so drawing a run of steps at once has the same law
    as drawing step by step, and costs one random call and one host sync per run instead of
    several per step.  Uniforms are float64 so that P(u < p) = p to 2^-53.  With per-sample
    generators (a list, ``draws="per_sample"``) row b's uniforms come from ``generator[b]``.
    Returns a :class:`_DrawPlan` (a sequence over the steps, made lazily).
    """
    C, K1 = len(probs), len(probs[0])
    W = 2 * K1 - 1  # per step: K1 fired masks, then K1 - 1 masks of the levels 2..K-1
    if is_per_sample(generator):
        if draws == "shared":
            raise ValueError("draws='shared' draws once for the whole batch: it cannot use per-sample generators")
        if draws == "exact":
            raise ValueError(
                "draws='exact' chooses the firing rows jointly for the batch: it cannot use per-sample "
                "generators (a sample's draws would depend on its batch); use draws='per_sample'"
            )
        check_generators(generator, batch)
    gen_device = generator.device if isinstance(generator, torch.Generator) else device
    if draws == "shared" or batch == 0:
        u = torch.rand((C, K1), generator=generator, device=gen_device, dtype=torch.float64).tolist()
        counts = []
        for un, pn in zip(u, probs):
            f = [un[k] < pn[k] for k in range(K1)]
            counts += [batch if b else 0 for b in f] + [batch if f[k] or f[k + 1] else 0 for k in range(K1 - 1)]
        return _DrawPlan(counts, W, batch, None, None)
    if is_per_sample(generator):
        u = rand((batch, C, K1), generator, dtype=torch.float64, device=gen_device).permute(1, 2, 0)
    else:
        u = torch.rand((C, K1, batch), generator=generator, device=gen_device, dtype=torch.float64)
    p = torch.tensor(probs, dtype=torch.float64, device=gen_device).unsqueeze(2)
    if draws == "exact":
        fired = _exact_fired(u, p * batch, generator, gen_device).to(device)
    else:
        fired = (u < p).to(device)
    mask = torch.cat([fired, fired[:, :-1] | fired[:, 1:]], dim=1)  # (C, W, batch)
    counts = mask.sum(2)  # (C, W)
    starts = [0] + counts.sum(1).cumsum(0)[:-1].tolist()
    cols = mask.view(C * W, batch).nonzero(as_tuple=True)[1]  # row-major: by step, mask, row
    return _DrawPlan(counts.view(-1).tolist(), W, batch, cols, starts)


def _exact_fired(u: torch.Tensor, pb: torch.Tensor, generator, device) -> torch.Tensor:
    """``draws="exact"``: per (step, level), c = floor(p B) + Bernoulli(frac(p B)) rows fire, chosen uniformly.

    ``u``: (C, K1, B) float64 uniforms, ``pb``: (C, K1, 1) the expected counts p B.  The rows
    with the c smallest uniforms fire (a uniformly random c-subset), so E[c] = p B and every
    row fires with probability E[c] / B = p, as with independent draws: each row's estimate
    stays unbiased, but the rows of a batch are (mildly) dependent.
    """
    base = pb.floor()
    c = base + (torch.rand(pb.shape, generator=generator, device=device, dtype=torch.float64) < pb - base)
    rank = u.argsort(dim=2).argsort(dim=2)
    return rank < c


def _mlem_drift(
    call: LevelEvaluator,
    x: torch.Tensor,
    t: float,
    probs: List[float],
    fired: list,
    needed: list,
    check_finite: bool,
) -> torch.Tensor:
    """One randomized telescoping estimate of f^K(x, t) given this step's draws.

    ``probs[l - 2]`` is p_l; ``fired`` and ``needed`` come from :func:`_plan_draws`.  Each
    needed level is evaluated once, on its rows only, and the correction of level l is
    added on the rows where it fired: F = f^1 + sum_l (B_l / p_l) (f^l - f^{l-1}).
    """
    K = len(probs) + 1
    out = {0: call(0, x, t)}  # each level's output on its own rows
    full = [out[0]] + [None] * (K - 1)  # the same, indexed by batch row (valid on needed rows)
    for j in range(1, K):
        rows = needed[j]
        if rows is None:
            continue
        if rows is _ALL:
            out[j] = full[j] = call(j, x, t)
        elif isinstance(rows, _Padded):  # draws="static": the level runs on a bucket of rows, the padding dropped
            out[j] = o = call(j, x.index_select(0, rows.index), t, rows.index)[: rows.count]
            rows = rows.rows
            if j < K - 1:
                full[j] = o.new_empty((x.shape[0], *o.shape[1:])).index_copy_(0, rows, o)
        else:
            out[j] = o = call(j, x.index_select(0, rows), t, rows)
            if j < K - 1:  # the top level's rows are exactly those of its correction: no scatter
                full[j] = o.new_empty((x.shape[0], *o.shape[1:])).index_copy_(0, rows, o)
    # F += (f^l - f^{l-1}) * (1 / p_l) on the rows where correction l fired (distinct rows, so
    # the sum is deterministic on every device); the 1 / p_l rides on the add's alpha.  (On
    # CPU, index_add with alpha = 1 becomes a scatter_add that starts the thread pool: ~50 us
    # with 16 threads even for 8 rows, against ~4 us for the alpha != 1 row loop.)
    drift, owned = out[0], False  # never modify a level's output in place
    for l in range(1, K):
        rows = _unpadded(fired[l - 1])
        if rows is None:
            continue
        w = 1.0 / probs[l - 1]
        if rows is _ALL:
            diff = full[l] - full[l - 1]
            drift = drift.add_(diff, alpha=w) if owned else torch.add(drift, diff, alpha=w)
        else:
            hi = out[l] if l == K - 1 else full[l].index_select(0, rows)
            diff = hi - full[l - 1].index_select(0, rows)
            drift = drift.index_add_(0, rows, diff, alpha=w) if owned else drift.index_add(0, rows, diff, alpha=w)
        owned = True
    if check_finite and not all_finite(drift):
        raise non_finite_error(call, out, t)
    return drift


def check_buckets(buckets, draws: str, batch: Optional[int] = None) -> Optional[Tuple[int, ...]]:
    """The bucket sizes of ``draws="static"`` for a batch of ``batch`` rows (:func:`~multilevel_em.engine.buckets.bucket_sizes`);
    None for the other modes.  ValueError for ``buckets`` given with another mode, or not a sequence of ints >= 1.
    With ``batch`` None only ``buckets`` itself is checked (returns the sorted sizes, or None for the default)."""
    if buckets is not None and draws != "static":
        raise ValueError(
            f"buckets: only draws='static' pads its level calls to bucket sizes, got draws={draws!r}; "
            "pass draws='static' or leave buckets unset"
        )
    if draws != "static":
        return None
    if batch is None:
        return None if buckets is None else check_bucket_sizes(buckets)
    return bucket_sizes(batch, buckets)


def telescoping_estimate(
    evaluator: LevelEvaluator,
    x: torch.Tensor,
    t: float,
    probs: Sequence[float],
    *,
    draws: str = "per_sample",
    generator: Generators = None,
    check_finite: bool = True,
    buckets: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """One draw of the ML-EM estimate f^1 + sum_{l=2..K} (B_l / p_l)(f^l - f^{l-1}) at (x, t).

    The building block of :func:`solve`, public for integrators that are not EM (diffusion
    samplers): ``probs[l - 2]`` is p_l in [0, 1] for l = 2..K; the levels are evaluated through
    ``evaluator`` (which counts them), each needed level once, on the rows that need it with
    ``draws="per_sample"``, ``"exact"`` or ``"static"`` (see :func:`solve`; ``buckets``: the bucket sizes of
    ``"static"``). ``generator``: None, a ``torch.Generator``, or (per-sample and static draws)
    one generator per row of ``x`` (see :mod:`multilevel_em.engine.random`). Shape of the
    result: the levels' output shape, ``(batch, *out_shape)`` (``x.shape`` for a plain
    :class:`LevelEvaluator`, which checks it).
    """
    probs = [float(p) for p in probs]
    if len(probs) != len(evaluator.ladder) - 1:
        raise ValueError(f"probs: expected {len(evaluator.ladder) - 1} probabilities, got {len(probs)}")
    if any(not 0.0 <= p <= 1.0 for p in probs):
        raise ValueError(f"probs: expected probabilities in [0, 1], got {probs}")
    if draws not in DRAWS:
        raise ValueError(f"draws: expected one of {', '.join(map(repr, DRAWS))}, got {draws!r}")
    sizes = check_buckets(buckets, draws, x.shape[0])
    if not probs:
        out = evaluator(0, x, t)
        if check_finite and not all_finite(out):
            raise non_finite_error(evaluator, {0: out}, t)
        return out
    if draws == "static":
        ((fired, needed),) = _plan_static([probs], x.shape[0], generator, x.device, sizes)
    else:
        ((fired, needed),) = _plan_draws([probs], x.shape[0], draws, generator, x.device)
    return _mlem_drift(evaluator, x, t, probs, fired, needed, check_finite)


def solve(
    ladder: Ladder,
    x0: torch.Tensor,
    *,
    t0: float,
    t1: float,
    steps: int,
    diffusion: Diffusion = None,
    method: str = "mlem",
    level: int = -1,
    rates: Optional[Sequence[Rate]] = None,
    noise: Optional[BrownianPath] = None,
    generator: Optional[torch.Generator] = None,
    draws: str = "per_sample",
    buckets: Optional[Sequence[int]] = None,
    save_every: Optional[int] = None,
    check_finite: bool = True,
    progress: bool = False,
) -> Solution:
    """Integrate dX = f(X, t) dt + g dW from t0 to t1 with EM or ML-EM.

    Args:
        ladder: the drift levels f^1..f^K and their costs. A level must not modify its input
            in place (:class:`~multilevel_em.Ladder`: detected, ``ValueError`` naming it).
        x0: initial state, shape ``(batch, *state_shape)``, a floating tensor on any device.
        t0, t1: start and end time, ``t1 > t0``.
        steps: number of uniform steps, h = (t1 - t0) / steps.
        diffusion: None (an ODE), a number, ``g(t)`` or ``g(x, t)``; the result multiplies
            the Brownian increment elementwise, so it must broadcast against ``x``
            (additive/diagonal noise).
        method: ``"em"`` (``ladder[level]`` at every step) or ``"mlem"``.
        level: the level EM uses (Python index, default the top level).
        rates: for ``"mlem"``, the rates lambda_2..lambda_K per unit time, numbers or
            callables of t; p = min(1, lambda h). Infinite accuracy costs infinite rate:
            a rate with lambda h >= 1 evaluates that correction at every step.
        noise: the Brownian path; by default a fresh :class:`BrownianPath` seeded from
            ``generator`` (tree depth fitted to ``steps``). Pass one path to several solves
            to compare them on the same Brownian motion. Must have ``x0``'s shape, dtype and device and cover [t0, t1].
        generator: a ``torch.Generator`` for the Bernoulli level draws (and the default
            noise); None uses torch's global generator.
        draws: ``"per_sample"`` (each sample draws its own levels; a level runs only on the
            sub-batch that needs it), ``"shared"`` (one draw per step for the batch) or
            ``"exact"`` (per step and level, floor(p B) + Bernoulli(frac(p B)) rows chosen
            uniformly at random fire: each row still fires with probability p, so each
            sample's estimate stays unbiased, but the rows of a batch become mildly dependent
            and the sub-batch sizes vary less; not with per-sample generators), or ``"static"``
            (the draws of ``"per_sample"``, made on the host from a CPU generator: row b fires correction l
            with probability exactly p_{n,l}, independently of the other rows, levels and steps, and is
            weighted 1 / p_{n,l}, so each sample's estimate is unbiased and the joint law is per-sample
            draws' (the same draws for the same CPU generator); each sub-batch is padded to a bucket size, so
            a level only ever runs on ``bucket_sizes(batch, buckets)`` rows, and no level call waits for the
            device (with ``check_finite=False``: the finiteness check reads one number per step)).
            ``Solution.evaluations`` then counts the padded rows too: they are real work.
        buckets: ``draws="static"`` only: the sub-batch sizes (ints >= 1); default the powers of two below
            the batch, at most 7 of them, and the batch itself (:func:`multilevel_em.engine.bucket_sizes`).
        save_every: save the state every this many steps (and at the end) into
            ``Solution.ts`` / ``Solution.xs``.
        check_finite: raise ``FloatingPointError`` naming the level and time when a level
            produces NaN or Inf.
        progress: show a progress bar over the steps.

    Returns:
        A :class:`Solution` with the final state and the cost actually spent.
    """
    if not isinstance(ladder, Ladder):
        raise TypeError(f"ladder: expected a multilevel_em.Ladder, got {type(ladder).__name__}")
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0: expected a torch.Tensor, got {type(x0).__name__}")
    if x0.ndim < 1 or not x0.dtype.is_floating_point:
        raise ValueError(
            f"x0: expected a floating tensor of shape (batch, *state_shape), got {x0.dtype} {tuple(x0.shape)}"
        )
    if not all_finite(x0):
        raise ValueError("x0: contains NaN or Inf")
    t0, t1 = _check_time("t0", t0), _check_time("t1", t1)
    if not t1 > t0:
        raise ValueError(f"t1: expected t1 > t0, got t0={t0}, t1={t1}")
    steps = _check_positive_int("steps", steps)
    if steps > MAX_STEPS:
        raise ValueError(
            f"steps: expected at most 2**51 = {MAX_STEPS} steps, got {steps}: a float64 time grid (and the "
            "Brownian path's dyadic tree) cannot resolve finer steps"
        )
    if method not in ("em", "mlem"):
        raise ValueError(f"method: expected 'em' or 'mlem', got {method!r}")
    if draws not in DRAWS:
        raise ValueError(f"draws: expected one of {', '.join(map(repr, DRAWS))}, got {draws!r}")
    sizes = check_buckets(buckets, draws, x0.shape[0])
    if draws == "static":
        _host_generators(generator)
    if save_every is not None:
        save_every = _check_positive_int("save_every", save_every)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    K = len(ladder)
    if method == "em":
        if isinstance(level, bool) or not isinstance(level, int) or not -K <= level < K:
            raise ValueError(f"level: expected an int in [{-K}, {K - 1}] for a ladder of {K} levels, got {level!r}")
        level = level % K
    elif K > 1:
        rates = _check_rates(rates, K, t0)
    g = resolve_diffusion(diffusion)
    if g is None and noise is not None:
        warnings.warn("noise: ignored, since diffusion is None (an ODE has no Brownian term)", stacklevel=2)
    if g is not None:
        if noise is None:
            # Leaves narrower than h/2: grid times fall in distinct leaves (exact law), at
            # about three normal draws per step.
            depth = max(1, math.ceil(math.log2(steps)) + 1)
            noise = BrownianPath(x0.shape, t0, t1, generator=generator, dtype=x0.dtype, device=x0.device, depth=depth)
        elif not isinstance(noise, BrownianPath):
            raise TypeError(f"noise: expected a BrownianPath, got {type(noise).__name__}")
        if noise.shape != x0.shape:
            raise ValueError(f"noise: shape {tuple(noise.shape)} differs from x0's {tuple(x0.shape)}")
        if noise.dtype != x0.dtype or noise.device != x0.device:
            raise ValueError(
                f"noise: dtype/device {noise.dtype}/{noise.device} differs from x0's {x0.dtype}/{x0.device}"
            )
        if noise.t0 > t0 or noise.t1 < t1:
            raise ValueError(f"noise: covers [{noise.t0}, {noise.t1}], which does not contain [t0, t1] = [{t0}, {t1}]")

    call = LevelEvaluator(ladder, x0)
    g_shape = x0.shape  # the last shape of g(x, t) checked to broadcast to the state's
    h = (t1 - t0) / steps
    batch = x0.shape[0]
    x = x0
    w_prev = noise._value(t0) if g is not None else None
    saved_t, saved_x = ([t0], [x0]) if save_every else ([], [])
    mlem = method == "mlem" and K > 1
    probs_log = StepProbabilities(K - 1) if mlem else None
    j_em = level if method == "em" else 0
    if mlem:
        # The Bernoulli draws are made for `chunk` steps at a time (see _plan_draws).
        chunk = max(1, _DRAWS_PER_CHUNK // ((K - 1) * max(batch, 1))) if draws != "shared" else 1024
        plan, pos = [], 0

    def times(n: int):
        t = t0 + n * h
        return t, (t1 if n == steps - 1 else t0 + (n + 1) * h)

    iterator = range(steps)
    if progress:
        from .._progress import progress_bar

        iterator = progress_bar(iterator, desc=f"{method} ({steps} steps)", leave=False)
    for n in iterator:
        t, t_next = times(n)
        h_n = t_next - t
        if not mlem:
            drift = call(j_em, x, t)
            if check_finite and not all_finite(drift):
                raise state_error(x, t) or non_finite_error(call, {j_em: drift}, t)
        else:
            if pos == len(plan):  # draw the levels of the next run of steps
                new = []
                for m in range(n, min(steps, n + chunk)):
                    tm, tm_next = times(m)
                    new.append(firing_probabilities(rates, tm, tm_next - tm))
                if draws == "static":
                    plan, pos = _plan_static(new, batch, generator, x.device, sizes), 0
                else:
                    plan, pos = _plan_draws(new, batch, draws, generator, x.device), 0
                probs_log.extend(new)
                run_probs = new
            fired, needed = plan[pos]
            probs_n = run_probs[pos]
            pos += 1
            try:
                drift = _mlem_drift(call, x, t, probs_n, fired, needed, check_finite)
            except FloatingPointError as e:
                raise (state_error(x, t) or e) from None
        # X_{n+1} = X_n + h_n F_n + g (W(t_{n+1}) - W(t_n)), with as few tensor operations as possible.
        x_next = torch.add(x, drift, alpha=h_n)
        if g is not None:
            w_next = noise._value(t_next)
            gx = g(x, t)
            if isinstance(gx, Real) and not isinstance(gx, bool):
                x_next.add_(w_next - w_prev, alpha=float(gx))
            else:
                if isinstance(gx, torch.Tensor) and gx.shape != g_shape:
                    _check_diffusion_shape(gx, x, t)
                    g_shape = gx.shape
                x_next = x_next + gx * (w_next - w_prev)
            w_prev = w_next
        x = x_next
        if save_every and ((n + 1) % save_every == 0 or n == steps - 1):
            saved_t.append(t_next)
            saved_x.append(x)
    return Solution(
        x=x,
        ts=torch.tensor(saved_t, dtype=torch.float64) if save_every else None,
        xs=torch.stack(saved_x) if save_every else None,
        evaluations=tuple(call.evaluations),
        costs=ladder.costs,
        batch_size=x0.shape[0],
        steps=steps,
        method=method,
        probabilities=probs_log,
    )

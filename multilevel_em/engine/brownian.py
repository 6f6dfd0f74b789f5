"""Reproducible Brownian paths that can be queried at any time.

A :class:`BrownianPath` is a *virtual Brownian tree*: W is defined at the dyadic
points of [t0, t1] by the Levy (midpoint bridge) construction, each midpoint drawn
from a generator seeded by a hash of ``(seed, depth, index)``.  A query at a
non-dyadic time t descends to a leaf interval [a, b] of width (t1 - t0) / 2**depth
and samples W(t) from the Brownian bridge between W(a) and W(b).  The bridge's unit
normal Z(t) is continuous in t: the leaf is cut into 2**_LEAF_BITS cells, each cell edge q
gets a normal Z_q seeded by ``(seed, leaf, q)``, and inside a cell Z(t) = cos(theta) Z_q +
sin(theta) Z_{q+1} with theta going from 0 to pi/2 (unit variance everywhere).  So times
that differ only by rounding (``t0 + 3 * (1/15)`` vs ``t0 + 1/5``) give values that agree to
rounding.  Consequences:

* ``W(t)`` is a deterministic function of ``(seed, t)``: the result does not depend on
  the order of queries, and increments over a fine grid sum to the increment over a
  coarser grid exactly up to float rounding (refinement consistency);
* the joint law of W at any set of query times is exactly Brownian as long as no two
  distinct query times fall strictly inside the same leaf interval (the default depth
  12 allows uniform grids of up to 4096 steps); inside one leaf the two bridge draws
  are correlated (conditionally independent if they are cells apart), an O(leaf width)
  approximation;
* grid times that are dyadic (``steps`` a power of two) stop the descent early, so a
  uniform grid of 2**k steps costs about one new normal draw per step.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional, Sequence, Union

import torch

__all__ = ["BrownianPath"]

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _mix(*parts: int) -> int:
    """Hash integers into a 63-bit seed (torch seeds must fit in a signed 64-bit int)."""
    h = 0x243F6A8885A308D3
    for p in parts:
        h = _splitmix64(h ^ (p & _MASK64))
    return h >> 1


_TAG_ROOT, _TAG_NODE, _TAG_LEAF = 1, 2, 3
#: Each leaf is cut into 2**_LEAF_BITS cells for the continuous bridge noise Z(t).
_LEAF_BITS = 4


class BrownianPath:
    """A Brownian motion W on [t0, t1] with values of shape ``shape``.

    Args:
        shape: shape of W(t), usually ``(batch, *state_shape)``; each entry is an
            independent standard Brownian motion.
        t0, t1: the time interval, ``t0 < t1`` (same units as the solver's time).
        seed: integer seed. Same seed, same path (on the same device and dtype).
        generator: a ``torch.Generator`` from which the seed is drawn when ``seed`` is
            not given. With neither, the seed is drawn from torch's global generator, so
            ``torch.manual_seed`` makes runs reproducible.
        dtype, device: of the returned increments (default: torch's default dtype, CPU).
        depth: depth of the dyadic tree; leaf intervals have width (t1 - t0) / 2**depth.
        cache_size: number of tree nodes kept (LRU); defaults to about 256 MiB worth.

    Example:
        >>> W = BrownianPath((4, 2), 0.0, 1.0, seed=0, dtype=torch.float64)
        >>> dW = W.increment(0.25, 0.5)   # shape (4, 2), variance 0.25
    """

    def __init__(
        self,
        shape: Union[int, Sequence[int], torch.Size],
        t0: float,
        t1: float,
        *,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        dtype: Optional[torch.dtype] = None,
        device: Union[str, torch.device, None] = None,
        depth: int = 12,
        cache_size: Optional[int] = None,
    ) -> None:
        if isinstance(shape, int):
            shape = (shape,)
        try:
            shape = torch.Size(int(s) for s in shape)
        except (TypeError, ValueError):
            raise TypeError(f"shape: expected a sequence of ints, got {shape!r}") from None
        if any(s < 0 for s in shape):
            raise ValueError(f"shape: expected non-negative sizes, got {tuple(shape)}")
        t0, t1 = float(t0), float(t1)
        if not (math.isfinite(t0) and math.isfinite(t1)):
            raise ValueError(f"t0, t1: expected finite times, got t0={t0}, t1={t1}")
        if not t1 > t0:
            raise ValueError(f"t1: expected t1 > t0, got t0={t0}, t1={t1}")
        if seed is not None and generator is not None:
            raise ValueError("seed, generator: give at most one of them")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= 52:
            raise ValueError(f"depth: expected an int in [1, 52], got {depth!r}")
        dtype = dtype if dtype is not None else torch.get_default_dtype()
        if not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating dtype, got {dtype}")
        if seed is None:
            gen_device = generator.device if generator is not None else "cpu"
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=gen_device).item())
        elif isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int, got {seed!r}")

        self.shape = shape
        self.t0, self.t1 = t0, t1
        self.seed = seed
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.depth = depth
        self._span = t1 - t0
        self._snap = 1e-12 * self._span
        if cache_size is None:
            node_bytes = max(1, shape.numel() * torch.empty((), dtype=dtype).element_size())
            cache_size = int(min(4096, max(64, (256 << 20) // node_bytes)))
        self._cache_size = cache_size
        self._cache: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
        self._gen = torch.Generator(device=self.device)
        self._zero = torch.zeros(shape, dtype=dtype, device=self.device)
        self._w1 = math.sqrt(self._span) * self._normal(_mix(seed, _TAG_ROOT))

    def __repr__(self) -> str:
        return (
            f"BrownianPath(shape={tuple(self.shape)}, t0={self.t0}, t1={self.t1}, seed={self.seed}, "
            f"dtype={self.dtype}, device={self.device})"
        )

    def _normal(self, seed: int) -> torch.Tensor:
        self._gen.manual_seed(seed)
        return torch.randn(self.shape, generator=self._gen, dtype=self.dtype, device=self.device)

    def _node(self, d: int, i: int, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
        key = (d, i)
        w = self._cache.get(key)
        if w is not None:
            self._cache.move_to_end(key)
            return w
        # Midpoint of a Brownian bridge over [a, b]: mean (wa + wb) / 2, variance (b - a) / 4.
        w = self._normal(_mix(self.seed, _TAG_NODE, d, i))
        w.mul_(0.5 * math.sqrt(self._span / 2**d)).add_(wa, alpha=0.5).add_(wb, alpha=0.5)
        self._cache[key] = w
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return w

    def _check_time(self, name: str, t: float) -> float:
        t = float(t)
        if not (self.t0 - self._snap <= t <= self.t1 + self._snap):
            raise ValueError(f"{name}: expected a time in [t0, t1] = [{self.t0}, {self.t1}], got {t}")
        return t

    def value(self, t: float) -> torch.Tensor:
        """W(t) - W(t0), shape ``self.shape`` (a fresh tensor)."""
        return self._value(self._check_time("t", t)).clone()

    def _value(self, t: float) -> torch.Tensor:
        # May return a cached tensor: callers must not modify it in place.
        if t - self.t0 <= self._snap:
            return self._zero
        if self.t1 - t <= self._snap:
            return self._w1
        a, b, wa, wb, i = self.t0, self.t1, self._zero, self._w1, 0
        for d in range(self.depth):
            m = self.t0 + (2 * i + 1) * self._span / 2 ** (d + 1)
            wm = self._node(d, i, wa, wb)
            if abs(t - m) <= self._snap:
                return wm
            if t < m:
                b, wb, i = m, wm, 2 * i
            else:
                a, wa, i = m, wm, 2 * i + 1
        # Inside a leaf: Brownian bridge between W(a) and W(b).
        # The unit normal rotates continuously from Z_q to Z_{q+1} across cell q, so that W
        # is continuous in t: a time perturbed by rounding gives W perturbed by rounding.
        frac = (t - a) / (b - a)
        std = math.sqrt((t - a) * (b - t) / (b - a))
        cell = frac * 2**_LEAF_BITS
        q = min(int(cell), 2**_LEAF_BITS - 1)
        theta = 0.5 * math.pi * (cell - q)
        w = self._normal(_mix(self.seed, _TAG_LEAF, i, q)).mul_(std * math.cos(theta))
        w.add_(self._normal(_mix(self.seed, _TAG_LEAF, i, q + 1)), alpha=std * math.sin(theta))
        return w.add_(wa, alpha=1.0 - frac).add_(wb, alpha=frac)

    def increment(self, s: float, t: float) -> torch.Tensor:
        """W(t) - W(s) for t0 <= s < t <= t1, shape ``self.shape``; variance t - s per entry."""
        s = self._check_time("s", s)
        t = self._check_time("t", t)
        if not s < t:
            raise ValueError(f"s, t: expected s < t, got s={s}, t={t}")
        return self._value(t) - self._value(s)

"""Ladder: a sequence of levels with costs and names (argument errors: test_validation.py)."""

from __future__ import annotations

import torch

from multilevel_em.engine import Ladder


def _levels(n):
    return [(lambda k: lambda x, t: -x * (k + 1))(k) for k in range(n)]


def test_sequence_protocol_and_defaults():
    fs = _levels(3)
    L = Ladder(fs, [1, 2, 8])
    assert len(L) == 3
    assert L[0] is fs[0] and L[-1] is fs[2]
    assert list(L) == fs
    assert fs[1] in L
    assert L.costs == (1.0, 2.0, 8.0)
    assert all(isinstance(c, float) for c in L.costs)
    assert L.top_cost == 8.0
    assert L.names == ("level 1", "level 2", "level 3")
    assert "level 3: cost 8" in repr(L)
    x = torch.ones(2, 1)
    assert torch.equal(L[2](x, 0.0), -3 * x)


def test_equal_costs_are_allowed_and_names_are_kept():
    L = Ladder(_levels(2), (3.0, 3.0), names=["small", "big"])
    assert L.names == ("small", "big")
    assert L.top_cost == 3.0


def test_accepts_generators_and_tuples():
    L = Ladder((f for f in _levels(2)), (c for c in (1, 4)))
    assert len(L) == 2 and L.costs == (1.0, 4.0)


def test_select_and_slicing_keep_levels_costs_and_names():
    fs = _levels(4)
    L = Ladder(fs, [1, 2, 4, 8], names="abcd")
    S = L.select([3, 0, -3, 0])  # duplicates dropped, negative indices allowed, sorted
    assert isinstance(S, Ladder)
    assert list(S) == [fs[0], fs[1], fs[3]]
    assert S.costs == (1.0, 2.0, 8.0)
    assert S.names == ("a", "b", "d")
    T = L[1:3]
    assert isinstance(T, Ladder)
    assert list(T) == fs[1:3] and T.costs == (2.0, 4.0) and T.names == ("b", "c")
    assert L[::2].costs == (1.0, 4.0)


def test_ladder_is_a_valid_levels_argument():
    L = Ladder(_levels(2), [1, 2])
    M = Ladder(L, L.costs)
    assert list(M) == list(L)

"""Padded sub-batches (engine.bucketed, issue 13): the same results as the unpadded call, padding counted."""

import pytest
import torch

from multilevel_em import Ladder, solve
from multilevel_em.engine import bucketed


def _mlp(seed: int):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 3))

    def f(x, t):  # t: a float or a (batch,) tensor
        return net(x) * (1 + (t.reshape(-1, 1) if isinstance(t, torch.Tensor) else t)) - x

    return f


def test_bucketed_pads_to_the_next_size_and_drops_the_padding():
    f = _mlp(0)
    b = bucketed(f, (8, 2, 4))
    assert [b.bucket(m) for m in (1, 2, 3, 5, 8, 9)] == [2, 2, 4, 8, 8, 9]  # above the largest: unpadded
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = b(x, 0.3)
        # Tolerance: batched float32 GEMMs may round differently at another batch size (~1e-7 relative).
        torch.testing.assert_close(out, f(x, 0.3), rtol=1e-6, atol=1e-6)
        t = torch.linspace(0, 1, 5)  # a per-row time is padded alongside
        torch.testing.assert_close(b(x, t), f(x, t), rtol=1e-6, atol=1e-6)
    assert out.shape == x.shape and b.padded_rows == 6 and b.calls == 2
    with pytest.raises(ValueError, match="sizes"):
        bucketed(f, [])
    with pytest.raises(ValueError, match="sizes"):
        bucketed(f, [4, 0])


def test_mlem_with_bucketed_levels_equals_unpadded():
    levels = [_mlp(s) for s in range(3)]
    x0 = torch.randn(37, 3, generator=torch.Generator().manual_seed(2))
    kw = dict(t0=0.0, t1=1.0, steps=16, rates=[8.0, 3.0], diffusion=0.3, draws="per_sample")
    with torch.no_grad():
        plain = solve(Ladder(levels, [1, 4, 16]), x0, generator=torch.Generator().manual_seed(3), **kw)
        padded = [bucketed(f, (1, 4, 16, 64)) for f in levels]
        buck = solve(Ladder(padded, [1, 4, 16]), x0, generator=torch.Generator().manual_seed(3), **kw)
    # Same draws, so the same sub-batches and counts (padding is not counted); the states agree up to
    # float32 rounding accumulated over 16 steps.
    assert buck.evaluations == plain.evaluations
    torch.testing.assert_close(buck.x, plain.x, rtol=1e-5, atol=1e-5)
    assert sum(p.padded_rows for p in padded) > 0

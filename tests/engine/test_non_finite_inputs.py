"""Non-finite inputs to solve (x0, the diffusion) are errors that name them."""

import pytest
import torch

from multilevel_em import Ladder, solve


def test_non_finite_x0_and_diffusion_are_named():
    ladder = Ladder([lambda x, t: -x, lambda x, t: -x + 0.1 * torch.sin(x)], costs=[1, 4])
    x0 = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="x0"):
        solve(ladder, x0.clone().fill_(float("nan")), t0=0.0, t1=1.0, steps=4, method="em")
    for method, kw in (("em", {}), ("mlem", {"rates": [2.0]})):
        with pytest.raises(FloatingPointError, match="diffusion"):
            solve(ladder, x0, t0=0.0, t1=1.0, steps=4, method=method, diffusion=lambda t: float("nan"), **kw)

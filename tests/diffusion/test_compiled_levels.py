"""compile=True (issue 23): levels through torch.compile, no recompilation after warm-up, results equal eager's.

Recompilations are counted with dynamo's counters (``torch._dynamo.utils.counters``: compiled frames and
unique graphs), reset between tests.  Compiling costs seconds per graph on a CPU: the fast test compiles
three graphs of tiny MLPs; the diffusers UNet tests are marked slow.  Tolerance against eager: float32,
rtol = atol = 1e-4 over a whole sampling run (inductor fuses and reorders float32 arithmetic: ~1e-6 per call).
"""

from __future__ import annotations

import pytest
import torch

from multilevel_em.diffusion import MultilevelDenoiser, MultilevelModel, VPSchedule, sample

dynamo = pytest.importorskip("torch._dynamo")
from torch._dynamo.utils import counters  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()
    counters.clear()


def _compiled_so_far() -> tuple:
    """(frames compiled, unique graphs, times dynamo gave up on a frame for its recompile limit)."""
    limit = sum(v for k, v in counters["unimplemented"].items() if "recompile limit" in k.lower())
    return counters["frames"]["total"], counters["stats"]["unique_graphs"], limit


class Eps(torch.nn.Module):
    """A tiny eps model of continuous time: t a float or a (batch,) tensor."""

    def __init__(self, width: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(5, width), torch.nn.SiLU(), torch.nn.Linear(width, 4))

    def forward(self, x, t):
        t = t if isinstance(t, torch.Tensor) else torch.full((x.shape[0],), float(t))
        return self.net(torch.cat([x, t.to(x.dtype).view(-1, 1)], 1))


def test_compiled_denoiser_never_recompiles_after_warm_up_and_matches_eager():
    schedule = VPSchedule.linear()
    levels = [Eps(8, 0), Eps(16, 1)]
    x_T = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    kw = dict(costs=[1, 4], draws="static", buckets=[2])  # level 2 sees 2 or 4 rows: 3 graphs in all
    den = MultilevelDenoiser(levels, rates=[5.0], compile=True, generator=torch.Generator(), **kw)
    with torch.no_grad():
        den.warm_up(x_T)
        warm = _compiled_so_far()
        assert warm[1] == 3 and warm[2] == 0, warm
        for rate in (1.0, 5.0, 40.0):  # several budgets: few, some, all rows fire
            eager = MultilevelDenoiser(levels, rates=[rate], generator=torch.Generator().manual_seed(7), **kw)
            den.rates, den.generator = [rate], torch.Generator().manual_seed(7)
            den.reset()
            run = lambda d: sample(
                d, x_T, schedule=schedule, steps=12, sampler="em", generator=torch.Generator().manual_seed(1)
            )
            a, b = run(den), run(eager)
            torch.testing.assert_close(a.x, b.x, rtol=1e-4, atol=1e-4)
            assert a.evaluations == b.evaluations
    assert _compiled_so_far() == warm  # nothing compiled after warm-up, at any budget


def test_compiled_denoiser_refuses_too_many_buckets():
    kw = dict(costs=[1, 4], rates=[5.0], draws="static", compile=True)
    den = MultilevelDenoiser([Eps(8, 0), Eps(16, 1)], buckets=range(1, 10), **kw)
    with pytest.raises(ValueError, match="recompile_limit"):
        den.warm_up(torch.zeros(300, 4))  # 9 buckets and the batch: 10 sizes, above dynamo's 8 graphs
    den.set_step(0.1)
    with pytest.raises(ValueError, match="recompile_limit"):
        den(torch.zeros(300, 4), 0.5)
    assert _compiled_so_far()[1] == 0  # refused before compiling anything


@pytest.mark.slow
@pytest.mark.compile
def test_compiled_unet_ladder_in_a_sampler_matches_eager():
    """Tiny diffusers UNets through their adapter (the timestep computed outside the graph), DDIM, two budgets."""
    from conftest import tiny_unet

    schedule = VPSchedule.linear()
    unets = [tiny_unet(4, 0), tiny_unet(8, 1)]
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = dict(costs=[1, 4], draws="static", buckets=[1], schedule=schedule)
    den = MultilevelDenoiser(unets, rates=[5.0], compile=True, **kw)
    with torch.no_grad():
        den.warm_up(x_T)
        warm = _compiled_so_far()
        for rate in (2.0, 30.0):
            den.rates, den.generator = [rate], torch.Generator().manual_seed(3)
            eager = MultilevelDenoiser(unets, rates=[rate], generator=torch.Generator().manual_seed(3), **kw)
            run = dict(schedule=schedule, steps=8, sampler="ddim")  # deterministic given the level draws
            torch.testing.assert_close(sample(den, x_T, **run).x, sample(eager, x_T, **run).x, rtol=1e-4, atol=1e-4)
    assert _compiled_so_far() == warm and warm[2] == 0


@pytest.mark.slow
@pytest.mark.compile
def test_compiled_multilevel_model_with_guidance_pairs_matches_eager():
    """UNet2DConditionModel ladder, classifier-free guidance pairs, static draws: no recompilation after the
    first pipeline-like run, equal to eager."""
    from conftest import tiny_unet2d_condition

    unets = [tiny_unet2d_condition(4, 0), tiny_unet2d_condition(8, 1)]
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    emb = torch.randn(4, 3, 16, generator=torch.Generator().manual_seed(1))
    xs = torch.cat([x, x])
    kw = dict(costs=[1, 4], draws="static", buckets=[1], pair_guidance=True)

    def run(mm, probs):
        mm.set_probabilities(probs)
        mm.generator = torch.Generator().manual_seed(5)
        return torch.stack([mm(xs, torch.tensor(k), encoder_hidden_states=emb).sample for k in (900, 500, 100)])

    mm = MultilevelModel(unets, compile=True, **kw)
    eager = MultilevelModel(unets, **kw)
    with torch.no_grad():
        run(mm, [1.0])  # warm-up: both levels at the full batch of pairs
        run(mm, [0.5])
        warm = _compiled_so_far()
        for p in (0.2, 0.5, 1.0):
            torch.testing.assert_close(run(mm, [p]), run(eager, [p]), rtol=1e-4, atol=1e-4)
    assert _compiled_so_far() == warm and warm[2] == 0

"""DiffusersUNetAdapter(trace=True): traced UNet levels give the eager forward's results (issue 13)."""

import warnings

import pytest
import torch

pytest.importorskip("diffusers")

from multilevel_em.diffusion import DiffusersUNetAdapter
from multilevel_em.images.ladder import build_unet


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_traced_adapter_equals_eager_at_other_batch_sizes():
    torch.manual_seed(0)
    unet = build_unet(4, sample_size=8).eval()
    eager, traced = DiffusersUNetAdapter(unet), DiffusersUNetAdapter(unet, trace=True)
    with torch.no_grad():
        traced(torch.randn(6, 1, 8, 8), 0.5)  # recorded at batch 6, then used at other sizes and times
        for b, t in ((1, 0.9), (3, 0.2), (11, 0.6)):
            x = torch.randn(b, 1, 8, 8)
            # Tolerance: float32 rounding (measured: bit-identical, the trace is not frozen).
            torch.testing.assert_close(traced(x, t), eager(x, t), rtol=0, atol=1e-6)
    assert len(traced._traced) == 1 and traced._traced[(torch.float32, torch.device("cpu"))] is not None


class _Untraceable(torch.nn.Module):
    def forward(self, x, k):
        if torch.jit.is_tracing():
            raise RuntimeError("no tracing here")
        return x * 2


def test_untraceable_model_warns_and_runs_eagerly():
    m = DiffusersUNetAdapter(_Untraceable(), trace=True)
    x = torch.randn(3, 1, 4, 4)
    with pytest.warns(UserWarning, match="could not be traced"):
        out = m(x, 0.5)
    torch.testing.assert_close(out, 2 * x, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the failure is remembered: no second trace, no second warning
        m(x, 0.5)

"""MultilevelPipeline with draws="static" and compile=True (issue 23): the per-sample draws padded to buckets, and
compiled UNets that compile once and give the eager samples."""

import os

import pytest
import torch

pytest.importorskip("diffusers")

from multilevel_em.engine import bucket_sizes, sample_generators
from multilevel_em.images import MultilevelPipeline

PRETRAINED = os.path.join(os.path.dirname(__file__), "..", "..", "multilevel_em", "images", "pretrained", "digits")


def test_static_pipeline_gives_the_per_sample_samples():
    pipe = MultilevelPipeline.from_pretrained(PRETRAINED)
    runs = {}
    for draws in ("per_sample", "static"):
        gens = sample_generators(0, range(6))  # per-image generators: static draws accept them too
        buckets = [2, 4] if draws == "static" else None
        runs[draws] = pipe(6, method="mlem", budget=4, generator=gens, draws=draws, buckets=buckets)
    # The same draws (per-sample draws made on the host), so the same samples up to float32 rounding of the
    # padded batches; the padded rows are counted: at least the per-sample counts.
    torch.testing.assert_close(runs["static"].x, runs["per_sample"].x, rtol=0, atol=1e-4)
    for a, b in zip(runs["static"].report["levels"], runs["per_sample"].report["levels"]):
        assert a["evaluations_per_sample"] >= b["evaluations_per_sample"]
    with pytest.raises(ValueError, match="compile: a compiled UNet needs"):
        pipe(2, method="mlem", budget=4, compile=True)
    with pytest.raises(ValueError, match="buckets"):
        pipe(2, method="mlem", budget=4, buckets=[2])
    with pytest.raises(ValueError, match="choose one"):
        pipe(2, method="em", steps=2, compile=True, trace=True)
    assert bucket_sizes(6, [2, 4]) == (2, 4, 6)


@pytest.mark.slow
@pytest.mark.compile
def test_compiled_pipeline_compiles_once_and_gives_the_eager_samples():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    pipe = MultilevelPipeline.from_pretrained(PRETRAINED)
    kw = dict(method="mlem", draws="static", buckets=[2])
    try:
        pipe(4, budget=8, compile=True, generator=torch.Generator().manual_seed(0), **kw)  # warm-up
        pipe(4, budget=8, compile=True, generator=torch.Generator().manual_seed(1), **kw)
        warm = counters["stats"]["unique_graphs"]
        for budget in (4, 16):
            g = lambda: torch.Generator().manual_seed(2)
            a = pipe(4, budget=budget, compile=True, generator=g(), **kw)
            b = pipe(4, budget=budget, generator=g(), **kw)
            torch.testing.assert_close(a.x, b.x, rtol=1e-4, atol=1e-4)
        assert counters["stats"]["unique_graphs"] == warm
    finally:
        torch._dynamo.reset()
        counters.clear()

"""MultilevelPipeline(trace=True): traced UNet levels give the eager samples and the same counts (issue 13)."""

import os

import pytest
import torch

pytest.importorskip("diffusers")

from multilevel_em.images import MultilevelPipeline

PRETRAINED = os.path.join(os.path.dirname(__file__), "..", "..", "multilevel_em", "images", "pretrained", "digits")


def test_traced_pipeline_gives_the_eager_samples_and_counts():
    pipe = MultilevelPipeline.from_pretrained(PRETRAINED)
    runs = {}
    for trace in (False, True):
        runs[trace] = pipe(6, method="mlem", budget=4, generator=torch.Generator().manual_seed(3), trace=trace)
    # Same draws and noise, so the same sub-batches: equal evaluation counts (the law of the
    # estimator is untouched) and samples equal up to float32 rounding.
    assert runs[True].report["levels"] == runs[False].report["levels"]
    torch.testing.assert_close(runs[True].x, runs[False].x, rtol=0, atol=1e-5)
    with pytest.raises(TypeError, match="trace"):
        pipe(2, method="em", steps=2, trace="yes")

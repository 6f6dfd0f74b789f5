"""load_samples refuses an unfinished job unless partial=True."""

import os

import pytest

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def tiny(tiny_ladder):
    """The shared tiny calibrated ladder (conftest): its folder."""
    return tiny_ladder


def test_load_samples_refuses_an_unfinished_job(tiny, tmp_path):
    from multilevel_em.jobs import JobError, SamplingJob, load_samples, run_job

    out = tmp_path / "job"
    run_job(
        SamplingJob(ladder=tiny, n=4, out=str(out), method="em", steps=1, batch_size=2),
        progress=False,
        echo=lambda *_: None,
    )
    assert load_samples(str(out))["x"].shape[0] == 4
    os.unlink(out / "shard-000001.npz")
    with pytest.raises(JobError, match="unfinished job, 1 of 2 shards complete"):
        load_samples(str(out))
    assert load_samples(str(out), partial=True)["indices"].tolist() == [0, 1]

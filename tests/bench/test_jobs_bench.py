"""The job throughput benchmark (``mlem bench jobs``, multilevel_em/bench/jobs_throughput.py) runs end to end and writes its JSON.

Throughput is not asserted (a shared machine); bit-identical samples across the three runs are.
"""

import json

import pytest

pytest.importorskip("ray")
pytest.importorskip("diffusers")


@pytest.mark.slow
def test_jobs_throughput_quick(tmp_path):
    from multilevel_em.bench import jobs_throughput as module

    out = tmp_path / "jobs.json"
    res = module.main(["--quick", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(res))
    assert data["bit_identical"] is True and data["n"] == 8 and data["quick"]
    assert set(data["runs"]) == {"local", "ray-1", "ray-2"}
    assert [data["runs"][k]["workers"] for k in ("local", "ray-1", "ray-2")] == [1, 1, 2]
    for run in data["runs"].values():
        assert run["samples_per_second"] > 0 and run["total_seconds"] >= run["sampling_seconds"]
        assert 0 < run["top_equivalents_per_sample"] < 10 * 1.5  # planned for a budget of 10

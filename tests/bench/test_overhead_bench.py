"""The overhead benchmark (``mlem bench overhead``, multilevel_em/bench/overhead.py) runs and writes the JSON it promises.

Timings are not asserted: this only checks that the script works end to end, on CPU, at
a size that takes a few seconds.
"""

from __future__ import annotations

import json

import pytest

from multilevel_em.bench import overhead as overhead_module


@pytest.fixture(scope="module")
def overhead():
    return overhead_module


def test_overhead_quick_writes_json(overhead, tmp_path, capsys):
    out = tmp_path / "results" / "overhead.json"
    res = overhead.main(["--quick", "--steps", "4", "--repeats", "1", "--batch", "16", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(res))
    for key in (
        "torch",
        "device",
        "device_name",
        "threads",
        "batch",
        "steps",
        "settings",
        "methods",
        "ratio",
        "ratio_shared",
        "target_ratio",
        "level_microbench",
        "costs_flops",
    ):
        assert key in data, key
    assert data["device"] == "cpu" and data["batch"] == 16 and data["steps"] == 4 and data["quick"]
    assert set(data["ratio"]) == {"typical", "sparse"}
    expected = {"em"} | {f"mlem_{s}_{d}" for s in ("typical", "sparse") for d in ("per_sample", "shared")}
    assert set(data["methods"]) == expected
    em = data["methods"]["em"]
    assert em["top_equivalents"] == pytest.approx(4.0)  # EM with the top level: one top evaluation per step
    for m in data["methods"].values():
        assert len(m["seconds"]) == 1 and m["seconds_per_top_equivalent"] > 0
        assert set(m["breakdown_seconds"]) == {"levels", "noise", "loop"}
    # Costs are the MLPs' FLOPs per sample, 2 (64 w + w^2 + 64 w) for w = 64 ... 512.
    assert data["costs_flops"] == [2 * (128 * w + w * w) for w in (64, 128, 256, 512)]
    assert len(data["level_microbench"]) == 4
    assert "ratio ML-EM/EM" in capsys.readouterr().out

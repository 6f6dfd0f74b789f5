"""The classifier-free guidance pairing benchmark (``mlem bench cfg-pairing``) runs in quick mode and writes its JSON."""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers")

from multilevel_em.bench import cfg_pairing


def test_cfg_pairing_benchmark_quick(tmp_path, capsys):
    out = tmp_path / "cfg.json"
    result = cfg_pairing.main(["--quick", "--out", str(out)])
    assert out.exists() and result["draws"] == 64
    by_w = {r["guidance_scale"]: r for r in result["results"]}
    # with guidance 7.5 independent draws add (1 - w)^2 + w^2 ~ 98x the variance of a shared draw of
    # similar differences: pairing must win clearly even at 64 draws
    assert by_w[7.5]["ratio_independent_over_paired"] > 3
    costs = result["flops_per_row"]["unet2d_condition_widths_4_8_16"]
    assert costs == sorted(costs) and costs[0] > 0

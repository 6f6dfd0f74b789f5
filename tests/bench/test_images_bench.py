"""``mlem bench images``: the Fréchet distance, the paired bootstrap, and the benchmark through the CLI."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import scipy.linalg
import torch
from click.testing import CliRunner

from multilevel_em.cli.main import main
from multilevel_em.images.data import load_digits
from multilevel_em.images.metrics import (
    bootstrap_counts,
    frechet_bootstrap,
    frechet_distance,
    frechet_gaussian,
    kid_bootstrap,
    kid_unbiased,
    load_digit_classifier,
    percentile_ci,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _spd(d, g):
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_gaussian_matches_closed_forms():
    g = torch.Generator().manual_seed(0)
    # diagonal covariances: |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2 exactly
    m1, m2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    a, b = torch.rand(6, generator=g, dtype=torch.float64) + 0.1, torch.rand(6, generator=g, dtype=torch.float64) + 0.1
    want = float((m1 - m2).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum())
    assert float(frechet_gaussian(m1, torch.diag(a), m2, torch.diag(b))) == pytest.approx(want, rel=1e-10)
    # general covariances: the scipy.linalg.sqrtm formula
    s1, s2 = _spd(5, g), _spd(5, g)
    m1, m2 = m1[:5], m2[:5]
    ref = (
        float((m1 - m2).pow(2).sum())
        + np.trace(s1.numpy() + s2.numpy())
        - 2 * np.trace(scipy.linalg.sqrtm(s1.numpy() @ s2.numpy())).real
    )
    assert float(frechet_gaussian(m1, s1, m2, s2)) == pytest.approx(ref, rel=1e-8)
    assert float(frechet_gaussian(m1, s1, m1, s1)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="frechet"):
        frechet_gaussian(m1, s1, m2[:4], s2[:4, :4])
    with pytest.raises(FloatingPointError):
        frechet_gaussian(m1 * math.nan, s1, m2, s2)


def test_frechet_distance_of_samples_from_known_gaussians():
    """Gaussians with known FD 1^2 + (sqrt 4 - 1)^2 = 2 (d = 2); 40000 samples each: the plug-in estimate's
    bias (~d/n) and noise (~0.02) are well within the stated tolerance 0.05."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40000, 2, generator=g, dtype=torch.float64)
    y = torch.randn(40000, 2, generator=g, dtype=torch.float64) * torch.tensor([2.0, 1.0], dtype=torch.float64)
    y[:, 1] += 1.0
    assert frechet_distance(x, y) == pytest.approx(2.0, abs=0.05)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(x[:1], y)


def test_bootstrap_with_unit_counts_is_the_point_estimate_and_matches_explicit_resamples():
    g = torch.Generator().manual_seed(2)
    fx, fy = torch.randn(60, 4, generator=g) + 0.5, torch.randn(50, 4, generator=g)
    ones = torch.ones(1, 60, dtype=torch.float64)
    assert float(kid_bootstrap(fx, fy, ones)) == pytest.approx(kid_unbiased(fx, fy), rel=1e-10)
    assert float(frechet_bootstrap(fx, fy, ones)) == pytest.approx(frechet_distance(fx, fy), rel=1e-8)
    counts = bootstrap_counts(60, 5, seed=3)
    assert torch.equal(counts.sum(1), torch.full((5,), 60.0, dtype=torch.float64))
    kb, fb = kid_bootstrap(fx, fy, counts), frechet_bootstrap(fx, fy, counts, chunk=2)
    k = lambda a, b: (a.double() @ b.double().T / 4 + 1) ** 3
    for b in range(5):
        idx = torch.repeat_interleave(torch.arange(60), counts[b].long())
        distinct = (idx[:, None] != idx[None, :]).double()  # pairs of two different original samples
        want = float(
            (k(fx[idx], fx[idx]) * distinct).sum() / distinct.sum()
            + (k(fy, fy).sum() - k(fy, fy).diagonal().sum()) / (50 * 49)
            - 2 * k(fx[idx], fy).mean()
        )
        assert float(kb[b]) == pytest.approx(want, rel=1e-9)
        assert float(fb[b]) == pytest.approx(frechet_distance(fx[idx], fy), rel=1e-8)


def test_bootstrap_ci_contains_the_estimate_and_paired_difference_of_identical_runs_is_zero():
    """Digit-classifier features of 1000 digits plus noise against all 1797 (fixed seeds, B = 200): each
    interval (KID: percentile; FD: percentile of the replicates centred on the estimate) contains its point estimate; two identical runs resampled by the same indices give a paired
    difference of exactly 0, while unpaired resamples (another seed) do not."""
    clf = load_digit_classifier()
    x = load_digits(16).x
    with torch.no_grad():
        f_all = clf.features(x).double()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(4))
    f = f_all[perm[:1000]] + 0.5 * torch.randn(
        1000, f_all.shape[1], generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    counts = bootstrap_counts(1000, 200, seed=0)
    kb, fb = kid_bootstrap(f, f_all, counts), frechet_bootstrap(f, f_all, counts)
    kid, fd = kid_unbiased(f, f_all), frechet_distance(f, f_all)
    lo, hi = percentile_ci(kb)  # KID: plain percentiles (its replicates pair distinct samples only)
    assert lo <= kid <= hi and lo < hi
    assert float(fb.mean()) > fd  # FD's bootstrap is biased upward (resamples repeat samples) ...
    lo, hi = percentile_ci(fb, center=fd)  # ... so the bench centres its replicates on the point estimate
    assert lo <= fd <= hi and lo < hi
    # the same run twice, resampled by the same indices: every paired replicate of the difference is 0
    assert percentile_ci(kb - kid_bootstrap(f.clone(), f_all, counts)) == pytest.approx((0.0, 0.0), abs=1e-9)
    assert percentile_ci(fb - frechet_bootstrap(f.clone(), f_all, counts)) == pytest.approx((0.0, 0.0), abs=1e-9)
    other = kid_bootstrap(f, f_all, bootstrap_counts(1000, 200, seed=1))
    lo, hi = percentile_ci(kb - other)
    assert hi - lo > 0  # unpaired resamples: the difference is not identically 0
    with pytest.raises(FloatingPointError):
        percentile_ci(torch.tensor([1.0, math.nan]))


def test_em_pathwise_errors_share_the_brownian_path():
    """EM-top 5 and 20 steps against 40 steps on 8 samples from one generator (shared Brownian tree): the
    error falls like 1/steps (ratio ~0.14 for order 1); with unshared noise it would stay near the
    distance between independent SDE solutions (ratio ~0.8). Stated bound: ratio < 0.5."""
    from multilevel_em.bench.images import em_pathwise
    from multilevel_em.images.pipeline import MultilevelPipeline

    pipe = MultilevelPipeline.from_pretrained(
        os.path.join(os.path.dirname(__file__), "..", "..", "multilevel_em", "images", "pretrained", "digits")
    )
    out = em_pathwise(
        pipe, [("em", {"steps": 5}), ("em", {"steps": 20})], 8, 40, seed=0, boot=50, boot_seed=1, echo=lambda s: None
    )
    e5, e20 = out["EM-top 5"]["pathwise_error"], out["EM-top 20"]["pathwise_error"]
    assert e20 < 0.5 * e5, (e5, e20)
    lo, hi = out["EM-top 20"]["pathwise_error_ci"]
    assert lo <= e20 <= hi


@pytest.mark.slow
def test_quick_bench_through_the_cli_writes_json_and_png(tmp_path):
    out, plot = tmp_path / "r" / "images.json", tmp_path / "r" / "images.png"
    r = CliRunner().invoke(main, ["bench", "images", "--quick", "--out", str(out), "--plot", str(plot)])
    assert r.exit_code == 0, r.output
    assert "estimated" in r.output and f"wrote {out}" in r.output
    d = json.loads(out.read_text())
    assert plot.stat().st_size > 1000
    for key in (
        "command",
        "settings",
        "machine",
        "runs",
        "fronts",
        "equal_cost",
        "pairs",
        "summary",
        "summary_lines",
        "estimate",
        "wall_seconds_total",
        "metrics",
        "reference_run",
        "notes",
    ):
        assert key in d, key
    assert d["command"].startswith("mlem") and d["quick"] is True  # (sys.argv: under CliRunner, pytest's)
    s = d["settings"]
    assert s["n"] == 128 and s["boot"] == 100 and s["pathwise_n"] == 32
    assert len(d["runs"]) == 3 and len(d["pairs"]) == 3
    for row in d["runs"]:
        for key in (
            "label",
            "family",
            "top_equivalents",
            "wall_seconds_per_sample",
            "kid",
            "kid_ci",
            "fd",
            "fd_ci",
            "kid_diff",
            "kid_diff_ci",
            "fd_diff_ci",
            "pathwise_error",
            "pathwise_error_ci",
        ):
            assert key in row, (row["label"], key)
        for v in (row["kid"], row["fd"], row["top_equivalents"], row["wall_seconds_per_sample"], row["pathwise_error"]):
            assert math.isfinite(v)
        assert row["kid_ci"][0] < row["kid_ci"][1] and row["fd_ci"][0] < row["fd_ci"][1]
    ref = next(row for row in d["runs"] if row["label"] == d["reference_run"])
    assert ref["kid_diff"] == 0 and ref["kid_diff_ci"] == [0.0, 0.0] and not ref["kid_diff_resolved"]
    mlem = next(row for row in d["runs"] if row["method"] == "mlem")
    assert mlem["plan"] is not None and "measured em curve" in mlem["plan_source"]
    assert set(d["fronts"]["kid"]["by_family"]) == {"em", "dpmpp_2m", "mlem:em"}
    assert d["equal_cost"][0]["mlem"] == mlem["label"] and "top_level_fires_every_step" in d["equal_cost"][0]


def test_bench_rejects_bad_input_before_any_work(tmp_path):
    r = CliRunner().invoke(main, ["bench", "images", "--n", "10", "--out", str(tmp_path / "a.json")])
    assert r.exit_code == 2 and "--n" in r.output and "at least 64" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["bench", "images", "--quick", "--boot", "3", "--out", str(tmp_path / "a.json")])
    assert r.exit_code == 2 and "--boot" in r.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = CliRunner().invoke(main, ["bench", "images", "--quick", "--out", str(blocker / "images.json")])
    assert r.exit_code == 2 and "--out" in r.output and "not a folder" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "results").exists()
    r = CliRunner().invoke(main, ["bench", "images", "--quick", "--out", str(tmp_path / "a.txt")])
    assert r.exit_code == 2 and ".json" in r.output
    r = CliRunner().invoke(
        main, ["bench", "images", "--quick", "--out", str(tmp_path / "a.json"), "--plot", str(tmp_path / "a.jpg")]
    )
    assert r.exit_code == 2 and "--plot" in r.output
    assert sorted(os.listdir(tmp_path)) == ["file"]

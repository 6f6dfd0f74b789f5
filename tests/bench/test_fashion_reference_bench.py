"""`mlem bench fashion-reference` on tiny IDX files the test writes and a classifier trained on them for one epoch."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("safetensors")

from conftest import write_fashion_files

from multilevel_em.bench.fashion_reference import gaussian_blur
from multilevel_em.cli.main import main


@pytest.fixture
def tiny_fashion(tmp_path):
    folder = write_fashion_files(tmp_path / "fashion", 40, 30)
    clf = tmp_path / "clf.safetensors"
    r = CliRunner().invoke(
        main,
        [
            "train-classifier",
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            str(folder),
            "--epochs",
            "1",
            "--out",
            str(clf),
        ],
    )
    assert r.exit_code == 0, r.output
    return folder, clf


def test_gaussian_blur_keeps_mass_and_smooths():
    x = torch.zeros(1, 1, 15, 15, dtype=torch.float64)
    x[0, 0, 7, 7] = 1.0
    y = gaussian_blur(x, 1.0)
    assert y.shape == x.shape and abs(float(y.sum()) - 1.0) < 1e-12  # the kernel is normalised; no mass at borders
    # the centre of a blurred impulse is the kernel's peak squared: (1 / sum_k exp(-k^2 / 2))^2
    peak = 1 / sum(np.exp(-0.5 * k**2) for k in range(-3, 4))
    assert float(y[0, 0, 7, 7]) == pytest.approx(peak**2, rel=1e-12)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(x, 0.0)


def test_fashion_reference_quick_writes_the_floor_and_blurs_with_the_protocol(tiny_fashion, tmp_path):
    folder, clf = tiny_fashion
    out = tmp_path / "ref.json"
    args = [
        "bench",
        "fashion-reference",
        "--quick",
        "--n",
        "20",
        "--boot",
        "30",
        "--data-dir",
        str(folder),
        "--classifier",
        str(clf),
        "--out",
        str(out),
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert d["protocol"]["n"] == 20 and "30 Fashion-MNIST test images" in d["protocol"]["reference"]
    assert [row["images"] for row in d["rows"]] == [
        "training images (the floor)",
        "training images blurred, sigma 1 px",
        "training images blurred, sigma 2 px",
    ]
    for row in d["rows"]:
        assert np.isfinite(row["fd"]) and row["fd_ci"][0] <= row["fd_ci"][1]
        assert np.isfinite(row["kid"]) and row["kid_ci"][0] <= row["kid_ci"][1]
    r = CliRunner().invoke(main, args)  # an existing result is replaced only with --overwrite
    assert r.exit_code == 2 and "--overwrite" in r.output


def test_fashion_reference_refuses_n_beyond_the_training_split(tiny_fashion, tmp_path):
    folder, clf = tiny_fashion
    out = tmp_path / "ref.json"
    r = CliRunner().invoke(
        main,
        [
            "bench",
            "fashion-reference",
            "--n",
            "41",
            "--boot",
            "30",
            "--data-dir",
            str(folder),
            "--classifier",
            str(clf),
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 2 and "fewer than n = 41" in r.output and not out.exists()

"""The Fashion-MNIST loader on tiny IDX files the test writes (the Debian package is not needed)."""

import struct

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_idx as _write_idx

from multilevel_em.images.data import load_dataset, load_fashion_mnist, read_idx


@pytest.fixture
def fashion_dir(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n, compress in (("train", 6, True), ("t10k", 4, False)):
        suffix = ".gz" if compress else ""
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), compress)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, compress)
    return tmp_path


def test_idx_round_trip_gz_and_plain(fashion_dir):
    a = read_idx(str(fashion_dir / "train-images-idx3-ubyte.gz"))
    b = read_idx(str(fashion_dir / "t10k-images-idx3-ubyte"))
    assert a.shape == (6, 28, 28) and b.shape == (4, 28, 28) and a.dtype == np.uint8


def test_fashion_padded_to_32_in_range(fashion_dir):
    data, y = load_fashion_mnist("train", data_dir=str(fashion_dir), labels=True)
    raw = read_idx(str(fashion_dir / "train-images-idx3-ubyte.gz"))
    assert data.x.shape == (6, 1, 32, 32) and data.x.dtype == torch.float32
    assert y.tolist() == [0, 1, 2, 3, 4, 5]
    # 2 pixels of background (-1) on each side; the 28x28 interior is the raw image scaled to [-1, 1]
    assert torch.all(data.x[:, :, :2] == -1) and torch.all(data.x[:, :, :, -2:] == -1)
    expected = torch.from_numpy(raw.astype(np.float32)) / 255 * 2 - 1
    assert torch.allclose(data.x[:, 0, 2:30, 2:30], expected, atol=1e-6)
    test = load_fashion_mnist("test", data_dir=str(fashion_dir))
    assert test.x.shape == (4, 1, 32, 32)
    assert load_dataset("fashion-mnist", size=32, data_dir=str(fashion_dir)).x.shape == (6, 1, 32, 32)


def test_missing_fashion_names_the_package_and_option(tmp_path):
    with pytest.raises(ValueError, match="dataset-fashion-mnist.*--data-dir"):
        load_fashion_mnist("train", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="dataset-fashion-mnist"):
        load_fashion_mnist("train", data_dir=str(tmp_path / "nowhere"))


def test_corrupt_idx_is_named(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(
        b"\x00\x00\x08\x03" + struct.pack(">III", 5, 28, 28) + b"\x00" * 10
    )
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: IDX header says"):
        load_fashion_mnist("train", data_dir=str(tmp_path))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"PNG\x00garbage")
    with pytest.raises(ValueError, match="bad magic number"):
        load_fashion_mnist("train", data_dir=str(tmp_path))


def test_cli_train_reports_missing_dataset(tmp_path):
    from multilevel_em.cli.main import main

    result = CliRunner().invoke(
        main,
        [
            "train",
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "out"),
            "--iters",
            "1",
        ],
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "dataset-fashion-mnist" in result.output and not (tmp_path / "out").exists()


def test_cli_train_rejects_data_dir_with_digits(tmp_path):
    from multilevel_em.cli.main import main

    result = CliRunner().invoke(
        main,
        ["train", "--dataset", "digits", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out"), "--iters", "1"],
    )
    assert result.exit_code == 2 and "--data-dir" in result.output


def test_cli_train_classifier_on_fashion_and_no_silent_overwrite(fashion_dir, tmp_path):
    from multilevel_em.cli.main import main
    from multilevel_em.images.metrics import load_fashion_classifier

    out = tmp_path / "clf.safetensors"
    args = [
        "train-classifier",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(fashion_dir),
        "--epochs",
        "1",
        "--out",
        str(out),
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "test accuracy" in r.output
    model = load_fashion_classifier(str(out))
    assert model.features(torch.zeros(3, 1, 32, 32)).shape == (3, 128)
    before = out.read_bytes()
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "--overwrite" in r.output and out.read_bytes() == before
    r = CliRunner().invoke(main, args + ["--overwrite"])
    assert r.exit_code == 0, r.output


def test_cli_train_refuses_a_device_this_machine_lacks(tmp_path):
    from multilevel_em.cli.main import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = CliRunner().invoke(
        main, ["train", "--dataset", "digits", "--device", "cuda", "--iters", "1", "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2 and "--device" in result.output and "no CUDA device" in result.output
    assert not (tmp_path / "out").exists()

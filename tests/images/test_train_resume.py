"""Resuming `mlem train` with fewer iterations than a level already has is refused, with nothing rewritten."""

import json

from click.testing import CliRunner

from multilevel_em.cli.main import main


def test_train_smaller_iters_refused_and_index_kept(tmp_path):
    out = tmp_path / "ladder"
    base = [
        "train",
        "--dataset",
        "digits",
        "--widths",
        "4",
        "--batch",
        "4",
        "--save-every",
        "1",
        "--no-calibrate",
        "--out",
        str(out),
    ]
    first = CliRunner().invoke(main, base + ["--iters", "3"])
    assert first.exit_code == 0, first.output
    index = (out / "model_index.json").read_text()
    weights = (out / "level_1" / "diffusion_pytorch_model.safetensors").read_bytes()
    again = CliRunner().invoke(main, base + ["--iters", "2"])
    assert again.exit_code != 0 and "Traceback" not in again.output
    assert "already been trained for 3 iterations" in again.output and "--iters" in again.output
    assert (out / "model_index.json").read_text() == index  # neither the recorded iters nor the command changed
    assert (out / "level_1" / "diffusion_pytorch_model.safetensors").read_bytes() == weights
    assert json.loads(index)["training"]["iters"] == 3

"""mlem sample --compile (issue 23): refused where it cannot run, and a compiled grid runs (mlem with static draws)."""

import json
import os

import pytest
from click.testing import CliRunner

from multilevel_em.cli.main import main

PRETRAINED = os.path.join(os.path.dirname(__file__), "..", "..", "multilevel_em", "images", "pretrained", "digits")


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_sample_compile_refusals(tmp_path):
    r = _run("sample", "--ladder", PRETRAINED, "--out", tmp_path / "g.png", "--n", 2, "--compile", "--trace")
    assert r.exit_code == 2 and "--trace and --compile" in r.output
    r = _run("sample", "--ladder", PRETRAINED, "--out", tmp_path / "job", "--n", 2, "--compile")
    assert r.exit_code == 2 and "only for an image grid" in r.output


@pytest.mark.slow
@pytest.mark.compile
def test_sample_compile_grid_runs_mlem_with_static_draws(tmp_path):
    reports = {}
    for flag in ([], ["--compile"]):
        out = tmp_path / f"g{len(flag)}.png"
        r = _run("sample", "--ladder", PRETRAINED, "--out", out, "--n", 4, "--budget", 4, "--batch-size", 4, *flag)
        assert r.exit_code == 0, r.output
        reports[bool(flag)] = json.loads(out.with_suffix(".json").read_text())
    assert reports[True]["method"] == "mlem" and reports[True]["n"] == 4

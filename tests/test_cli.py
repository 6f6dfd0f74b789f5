"""The ``mlem`` command line."""

from __future__ import annotations

import json
import math

from click.testing import CliRunner

import multilevel_em
from multilevel_em.cli.main import main


def test_help_lists_the_commands():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.stdout
    for cmd in ("demo", "version"):
        assert cmd in r.stdout
    r = CliRunner().invoke(main, ["demo", "-h"])
    assert r.exit_code == 0 and "--quick" in r.stdout and "--json" in r.stdout


def test_version():
    r = CliRunner().invoke(main, ["version"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == multilevel_em.__version__


def test_unknown_command_fails():
    r = CliRunner().invoke(main, ["frobnicate"])
    assert r.exit_code != 0


def test_demo_quick_json():
    # --paths 16 keeps this to about a second (the default 256 paths takes tens of seconds).
    r = CliRunner().invoke(main, ["demo", "--quick", "--json", "--paths", "16", "--seed", "1"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)  # the whole of stdout is one JSON document
    assert data["n_paths"] == 16
    rows = data["rows"]
    assert {row["method"] for row in rows} == {"em", "mlem"}
    for row in rows:
        assert set(row) >= {"method", "steps", "mu", "top_equivalents", "error", "seconds"}
        assert math.isfinite(row["error"]) and row["error"] > 0
        assert row["top_equivalents"] > 0
    for row in rows:
        if row["method"] == "em":
            # EM with N steps costs N top-level evaluations.
            assert row["top_equivalents"] == row["steps"] and row["mu"] is None
        else:
            assert row["mu"] is not None
    em = [row["error"] for row in rows if row["method"] == "em"]
    assert em == sorted(em, reverse=True), f"EM error should fall with more steps: {em}"


def test_demo_rejects_too_few_paths():
    r = CliRunner().invoke(main, ["demo", "--quick", "--paths", "1"])
    assert r.exit_code != 0
    assert "--paths" in r.output

"""One registry behind ``mlem bench NAME``; one provenance function for the command line in results files;
the old import paths of the moved modules still work, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import json
import sys
import warnings

import click
import pytest
from click.testing import CliRunner

from multilevel_em.bench import BENCHMARKS
from multilevel_em.bench.registry import get
from multilevel_em.cli._common import command_line
from multilevel_em.cli.bench import bench
from multilevel_em.cli.main import main


def test_bench_help_lists_every_registered_benchmark():
    r = CliRunner().invoke(main, ["bench", "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    listed = [line.split()[0] for line in r.output.split("Commands:")[1].splitlines() if line.strip()]
    assert sorted(listed) == sorted(BENCHMARKS)
    assert set(bench.commands) == set(BENCHMARKS)
    # the folded-in scripts are among them
    assert {"overhead", "jobs", "wallclock", "gpu", "distill", "cfg-pairing"} <= set(BENCHMARKS)


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_benchmark_module_exists_and_has_its_entry_point(name):
    b = get(name)
    module = b.load()
    assert module.__name__ == f"multilevel_em.bench.{b.module}"
    if b.options == "argv":
        assert callable(module.main)
    assert all(path.startswith("results/") for path in b.results)


def test_unknown_benchmark_is_refused():
    with pytest.raises(ValueError, match="htmc"):
        get("nope")
    r = CliRunner().invoke(main, ["bench", "nope"])
    assert r.exit_code != 0 and "No such command" in r.output


@pytest.mark.parametrize("name", [n for n, b in BENCHMARKS.items() if b.options == "argv"])
def test_argv_benchmarks_show_their_own_help(name, capsys):
    r = CliRunner().invoke(main, ["bench", name, "--help"])
    assert r.exit_code == 0
    assert f"usage: mlem bench {name}" in r.output


def test_argv_benchmark_gets_its_arguments_and_the_command_line(monkeypatch):
    module = get("cfg-pairing").load()
    seen = []
    monkeypatch.setattr(module, "main", lambda argv, command: seen.append((argv, command)))
    r = CliRunner().invoke(main, ["bench", "cfg-pairing", "--quick", "--out", "a b.json"])
    assert r.exit_code == 0, r.output
    assert seen == [(["--quick", "--out", "a b.json"], "mlem bench cfg-pairing --quick --out 'a b.json'")]


def test_argv_benchmark_errors_exit_with_a_usage_error():
    r = CliRunner().invoke(main, ["bench", "overhead", "--settings", "nope"])
    assert r.exit_code == 2 and "unknown setting" in r.output


def test_command_line_lists_the_options_given_in_declaration_order():
    seen = []

    @click.group()
    def root():
        pass

    @root.command("run")
    @click.option("--n", default=3)
    @click.option("--quick", is_flag=True)
    @click.option("--calibrate/--no-calibrate", default=True)
    @click.option("--out", default="x.json")
    def run(n, quick, calibrate, out):
        seen.append(command_line())

    runner = CliRunner()
    assert runner.invoke(root, ["run"]).exit_code == 0
    assert runner.invoke(root, ["run", "--out", "my file.json", "--quick", "--n", "3", "--no-calibrate"]).exit_code == 0
    assert seen == ["mlem run", "mlem run --n 3 --quick --no-calibrate --out 'my file.json'"]


def test_demo_htmc_records_the_command(monkeypatch, tmp_path):
    import multilevel_em.demo.htmc as htmc

    monkeypatch.setattr(htmc, "run_demo", lambda **kw: {"rows": []})
    out = tmp_path / "d.json"
    r = CliRunner().invoke(main, ["demo", "--problem", "htmc", "--quick", "--paths", "64", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["command"] == f"mlem demo --problem htmc --quick --paths 64 --out {out}"


def test_cli_modules_import_no_benchmark():
    code = (
        "import sys, multilevel_em.cli.main; "
        "print(sorted(m for m in sys.modules if m.startswith('multilevel_em.bench.') "
        "and m != 'multilevel_em.bench.registry'))"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "old, new, name",
    [
        ("multilevel_em.bench.demo", "multilevel_em.demo.htmc", "run_demo"),
        ("multilevel_em.bench.image_demo", "multilevel_em.demo.images", "run_image_demo"),
    ],
)
def test_old_demo_paths_still_work_with_a_deprecation_warning(old, new, name):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
    assert module._run is importlib.import_module(new)._run  # private names too

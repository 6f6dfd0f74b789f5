"""Options that do not apply are refused by name, not ignored or met with a traceback (review of issue 19/20)."""

import json

from click.testing import CliRunner

from multilevel_em.cli.main import main


def _cli(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_sample_job_folder_refuses_the_grid_only_options(tiny_ladder, tmp_path):
    out = tmp_path / "job"
    for extra, named in ((["--scale", "2"], "--scale"), (["--threads", "1"], "--threads")):
        r = _cli(
            ["sample", "--ladder", tiny_ladder, "--method", "em", "--steps", "2", "--n", "2", "--out", out, *extra]
        )
        assert r.exit_code == 2 and named in r.output and "image grid" in r.output, r.output
        assert not out.exists()


def test_bench_distill_names_bad_arguments_without_a_traceback(tmp_path):
    for args, words in (
        (["--stages", "300,x"], "--stages: expected comma-separated"),
        (["--stages", "600,300"], "--stages: expected increasing"),
        (["--ladders", "foo", "--extend", "900"], "--ladders: expected some of digits, data_free"),
        (["--extend", "900", "--out", tmp_path / "none.json"], "--extend: continues a finished run"),
    ):
        r = _cli(["bench", "distill", *args])
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, (args, r.output)
    done = tmp_path / "distill.json"
    done.write_text(json.dumps({"settings": {"stages": [300, 600]}}))
    r = _cli(["bench", "distill", "--extend", "600", "--out", done])
    assert r.exit_code == 2 and "more than the run's last stage 600" in r.output
    assert json.loads(done.read_text()) == {"settings": {"stages": [300, 600]}}


def test_argv_benchmarks_bound_threads():
    for name in ("overhead", "wallclock", "real-ladders"):
        r = _cli(["bench", name, "--threads", "0"])
        assert r.exit_code == 2 and "--threads" in r.output and "Traceback" not in r.output, (name, r.output)

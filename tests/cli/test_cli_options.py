"""Options that do not apply are refused, naming them, and bad values are refused before the work (issue 20,
item 25 and 'also noticed'; through the entry point)."""

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

from click.testing import CliRunner

import multilevel_em
from multilevel_em.cli.main import main
from multilevel_em.images import MultilevelPipeline


class WorkStarted(Exception):
    """Raised by a stubbed calibration: the command got past its checks."""


def _cli(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _stop(*args, **kwargs):
    raise WorkStarted()


@pytest.fixture
def no_work(monkeypatch):
    """Both calibrations stubbed: a refusal must come before either."""
    monkeypatch.setattr(MultilevelPipeline, "calibrate", _stop)
    monkeypatch.setattr(multilevel_em, "calibrate", _stop)


@pytest.mark.parametrize(
    "option", [["--gamma", "2"], ["--levels", "3"], ["--paths", "16"], ["--target", "0.1"], ["--problem", "htmc"]]
)
def test_calibrate_ladder_refuses_the_htmc_options(option, tiny_ladder, no_work, tmp_path):
    """Item 25: with --ladder, --gamma/--levels/--paths (and --target, --problem) were silently ignored."""
    r = _cli(["calibrate", "--ladder", tiny_ladder, *option, "--out", tmp_path / "c.json"])
    assert r.exit_code == 2 and option[0] in r.output and "only without --ladder" in r.output, r.output
    assert not (tmp_path / "c.json").exists()


def test_calibrate_ladder_names_every_option_that_does_not_apply(tiny_ladder, no_work, tmp_path):
    r = _cli(["calibrate", "--ladder", tiny_ladder, "--gamma", "2", "--paths", "16", "--out", tmp_path / "c.json"])
    assert r.exit_code == 2 and "--gamma, --paths: only without --ladder" in r.output, r.output


@pytest.mark.parametrize("option", [["--images", "8"], ["--samplers", "em"], ["--sampler-images", "8"], ["--trace"]])
def test_calibrate_without_ladder_refuses_the_ladder_options(option, no_work):
    """Item 25: --images was ignored without --ladder while --samplers/--trace were refused: now all four are."""
    r = _cli(["calibrate", *option])
    assert r.exit_code == 2 and option[0] in r.output and "only with --ladder" in r.output, r.output


def test_calibrate_sampler_images_needs_samplers(tiny_ladder, no_work, tmp_path):
    r = _cli(["calibrate", "--ladder", tiny_ladder, "--sampler-images", "8", "--out", tmp_path / "c.json"])
    assert r.exit_code == 2 and "--sampler-images: only with --samplers" in r.output, r.output


def test_calibrate_ladder_refuses_a_too_small_budget_before_calibrating(tiny_ladder, no_work, tmp_path):
    """Also noticed: `--budget 0.001` was refused only after the whole calibration."""
    r = _cli(["calibrate", "--ladder", tiny_ladder, "--budget", "0.001", "--out", tmp_path / "c.json"])
    assert r.exit_code == 2 and "--budget" in r.output and "too small" in r.output, r.output
    assert not isinstance(r.exception, WorkStarted)
    r = _cli(["calibrate", "--ladder", tiny_ladder, "--budget", "4", "--out", tmp_path / "c.json"])
    assert isinstance(r.exception, WorkStarted)  # a sensible budget gets to the calibration


@pytest.mark.parametrize("n, warned", [(4, True), (15, True), (16, False), (32, False)])
def test_calibrate_warns_on_few_sampler_images(n, warned, tiny_ladder, no_work, tmp_path):
    """Also noticed: small --sampler-images gave noisy verdicts without a word; below 16 a warning says why."""
    r = _cli(
        [
            "calibrate",
            "--ladder",
            tiny_ladder,
            "--samplers",
            "ddim",
            "--sampler-images",
            n,
            "--out",
            tmp_path / "c.json",
        ]
    )
    assert isinstance(r.exception, WorkStarted)
    assert ("warning: --sampler-images" in r.output) == warned, r.output
    if warned:
        assert "may change with --seed" in " ".join(r.output.split())


def test_htmc_calibration_still_takes_its_own_options(tmp_path):
    """The refusals above leave the HTMC calibration's options working."""
    out = tmp_path / "c.json"
    r = _cli(["calibrate", "--gamma", "3", "--levels", "3", "--paths", "8", "--budget", "4", "--out", out])
    assert r.exit_code == 0, r.output
    assert out.exists()

"""The calibration file is checked field by field when it loads (issue 20, items 5, 6, 12 and 17).

A hand-edited ``calibration.json`` with a bad number used to load and either plan nonsense
(NaN errors, a 1-step sample) or fail at plan time with a message naming neither the file nor
the field.  Here every bad edit is refused by ``Calibration.from_dict`` with a message that starts
with the field's path, by ``Calibration.load`` with ``PATH: field: ...``, and by ``mlem sample`` /
``mlem bench samplers`` in one line, before anything is written.  Calibrations the code writes
(``calibrate`` on a synthetic ladder, the shipped digits calibration, measured sampler fits, the
tiny test ladder's) must load back unchanged.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from multilevel_em import Calibration, calibrate
from multilevel_em.calibration import SamplerFit
from multilevel_em.calibration.samplers import measure_samplers
from multilevel_em.cli.main import main
from multilevel_em.images import CheckpointError, MultilevelPipeline
from multilevel_em.problems import htmc

SHIPPED = os.path.join(os.path.dirname(__file__), "..", "..", "multilevel_em", "images", "pretrained", "digits")
SHIPPED_CAL = os.path.join(SHIPPED, "calibration.json")
NAN = float("nan")


@pytest.fixture(scope="module")
def shipped() -> dict:
    with open(SHIPPED_CAL) as f:
        return json.load(f)


def edited(d: dict, edit) -> dict:
    d = copy.deepcopy(d)
    edit(d)
    return d


def setter(path, value):
    """An edit that sets ``d[path[0]][path[1]]... = value``."""

    def edit(d):
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value

    return edit


def point(**kw):
    """A gain point of the shipped "em" fit, edited."""
    p = {
        "steps": 8,
        "mu": 1679.7,
        "levels": [2, 4],
        "measured_variance": 218.3,
        "measured_variance_se": 22.2,
        "predicted_variance": 55.2,
    }
    p.update(kw)
    return {k: v for k, v in p.items() if v is not ...}


def reversed_times(d):
    d["times"] = d["times"][::-1]


def pairwise_one_side(d):
    d["pairwise"][3][2][1] *= 1.5


def drop_key(key):
    def edit(d):
        del d[key]

    return edit


def del_point_key(key):
    def edit(d):
        del d["samplers"]["em"]["gain_points"][0][key]

    return edit


# (id, edit of the shipped calibration, regex the message must match: the field's path first)
BAD_EDITS = [
    # item 5: the step-error model's numbers
    ("step_error nan", setter(["step_error"], NAN), r"^step_error: expected a finite number >= 0, got nan"),
    ("step_error negative", setter(["step_error"], -81.0), r"^step_error: expected a finite number >= 0, got -81"),
    ("step_error string", setter(["step_error"], "81"), r"^step_error: expected a finite number >= 0, got '81'"),
    ("top_bias negative", setter(["top_bias"], -0.5), r"^top_bias: expected a finite number >= 0, got -0.5"),
    ("top_bias nan", setter(["top_bias"], NAN), r"^top_bias: expected a finite number >= 0, got nan"),
    ("top_bias not 0 for reference top", setter(["top_bias"], 0.5), r"^top_bias: expected 0 with reference 'top'"),
    ("step_error without top_bias", setter(["top_bias"], None), r"^top_bias: missing"),
    ("step_error_steps 0", setter(["step_error_steps"], 0), r"^step_error_steps: expected an integer >= 1, got 0"),
    ("step_error_refine 1", setter(["step_error_refine"], 1), r"^step_error_refine: expected an integer >= 2"),
    ("step_error_steps missing", setter(["step_error_steps"], None), r"^step_error_steps: missing"),
    # item 6: the times
    ("times reversed", reversed_times, r"^times: expected strictly increasing times, but times\[1\]"),
    ("times repeated", setter(["times", 2], 0.111), r"^times: expected strictly increasing times, but times\[2\]"),
    ("time after t1", setter(["times", 11], 1.5), r"^times: expected times in \[t0, t1\] = \[0.0, 0.999\]"),
    ("time before t0", setter(["times", 0], -0.1), r"^times: expected times in \[t0, t1\]"),
    ("time nan", setter(["times", 4], NAN), r"^times\[4\]: expected finite numbers, got nan"),
    ("times a number", setter(["times"], 0.5), r"^times: expected a non-empty list of times"),
    ("t1 before t0", setter(["t1"], -1.0), r"^t1: expected t1 > t0"),
    # item 17: costs
    ("costs nan", setter(["costs", 1], NAN), r"^costs\[1\]: expected finite numbers, got nan"),
    ("costs decreasing (flops)", setter(["costs", 2], 1.0e6), r"^costs: expected nondecreasing costs .*costs\[2\]"),
    ("costs zero", setter(["costs", 0], 0.0), r"^costs\[0\]: expected a positive cost, got 0.0"),
    ("costs too few", setter(["costs"], [1.0, 2.0]), r"^costs: expected shape \(levels,\) = \(4,\), got \(2,\)"),
    ("costs strings", setter(["costs"], ["1", "2", "3", "4"]), r"^costs: expected numbers"),
    ("ladder_costs nan", setter(["ladder_costs", 3], NAN), r"^ladder_costs\[3\]: expected finite numbers"),
    ("ladder_costs decreasing", setter(["ladder_costs", 1], 1.0), r"^ladder_costs: expected nondecreasing costs"),
    # item 17: names, levels, states
    ("names a string", setter(["names"], "width 4"), r"^names: expected a list of level names"),
    ("names of numbers", setter(["names"], [4, 8, 16, 32]), r"^names: expected a list of level names"),
    ("one level", setter(["names"], ["width 4"]), r"^names: expected 2 or more levels"),
    ("n_states negative", setter(["n_states"], -16), r"^n_states: expected an integer >= 1, got -16"),
    ("n_states fractional", setter(["n_states"], 16.5), r"^n_states: expected an integer >= 1, got 16.5"),
    ("n_states bool", setter(["n_states"], True), r"^n_states: expected an integer >= 1, got True"),
    ("fit_levels out of range", setter(["fit_levels"], [0, 1, 7]), r"^fit_levels\[2\]: expected an integer >= 0"),
    ("fit_levels negative", setter(["fit_levels"], [-1, 0]), r"^fit_levels\[0\]: expected an integer >= 0 and <= 3"),
    ("fit_levels with the top", setter(["fit_levels"], [1, 3]), r"^fit_levels: level index 3 is the top level"),
    ("fit_levels unordered", setter(["fit_levels"], [2, 0]), r"^fit_levels: expected 2 or more increasing"),
    ("gamma nan", setter(["gamma"], NAN), r"^gamma: expected a finite number, got nan"),
    ("gamma_se negative", setter(["gamma_se"], -0.1), r"^gamma_se: expected a finite number >= 0"),
    ("gamma_se without gamma", setter(["gamma"], None), r"^gamma_se: expected null without gamma"),
    # item 17: the measured differences and labels
    (
        "pairwise negative",
        setter(["pairwise", 0, 1, 0], -1.0),
        r"^pairwise\[0\]\[1\]\[0\]: expected finite numbers >= 0",
    ),
    ("pairwise one side", pairwise_one_side, r"^pairwise\[3\]\[1\]\[2\]: expected a symmetric matrix"),
    ("pairwise diagonal", setter(["pairwise", 0, 2, 2], 1.0), r"^pairwise\[0\]\[2\]\[2\]: expected 0"),
    ("errors_t off the top column", setter(["errors_t", 1, 0], 1.0), r"^errors_t\[1\]\[0\]: with reference 'top'"),
    ("errors_t inf", setter(["errors_t", 1, 0], math.inf), r"^errors_t\[1\]\[0\]: expected finite numbers >= 0"),
    ("timing unknown", setter(["timing"], "gpu"), r"^timing: expected one of 'wall', 'flops', 'given', got 'gpu'"),
    ("reference unknown", setter(["reference"], "truth"), r"^reference: expected one of 'given', 'top'"),
    ("cost_unit a number", setter(["cost_unit"], 1), r"^cost_unit: expected a string, got 1"),
    ("unknown field", setter(["step_eror"], 1.0), r"^step_eror: unknown field .*a typo\?"),
    ("missing field", drop_key("costs"), r"^missing field costs"),
    ("wrong format", setter(["format"], "other"), r"^format: not a calibration"),
    ("wrong version", setter(["version"], 2), r"^version: unsupported calibration format version 2"),
    # item 12 and 17: sampler fits and their gain points
    ("samplers a list", setter(["samplers"], []), r"^samplers: expected an object"),
    ("fit not an object", setter(["samplers", "em"], 3), r"^samplers\.em: expected an object"),
    (
        "fit under another name",
        setter(["samplers", "ddim", "sampler"], "em"),
        r"^samplers\.ddim\.sampler: expected 'ddim'",
    ),
    ("fit family", setter(["samplers", "em", "family"], "pde"), r"^samplers\.em\.family: expected one of 'sde', 'ode'"),
    (
        "fit fractional steps",
        setter(["samplers", "em", "steps", 0], 4.5),
        r"^samplers\.em\.steps\[0\]: expected an integer >= 1, got 4.5",
    ),
    (
        "fit steps unordered",
        setter(["samplers", "em", "steps", 1], 3),
        r"^samplers\.em\.steps: expected 2 or more increasing step counts",
    ),
    (
        "fit error nan",
        setter(["samplers", "dpmpp_2m", "errors", 2], NAN),
        r"^samplers\.dpmpp_2m\.errors\[2\]: expected finite numbers >= 0, got nan",
    ),
    (
        "fit error zero",
        setter(["samplers", "em", "errors", 2], 0.0),
        r"^samplers\.em\.errors\[2\]: expected a positive",
    ),
    (
        "fit errors_se short",
        setter(["samplers", "em", "errors_se"], [0.1]),
        r"^samplers\.em\.errors_se: expected shape",
    ),
    (
        "fit ref_steps",
        setter(["samplers", "em", "ref_steps"], 100),
        r"^samplers\.em\.ref_steps: expected an integer >= 129",
    ),
    ("fit n", setter(["samplers", "em", "n"], 1), r"^samplers\.em\.n: expected an integer >= 2, got 1"),
    ("fit gain", setter(["samplers", "em", "gain"], -1.0), r"^samplers\.em\.gain: expected a finite number > 0"),
    ("fit order string", setter(["samplers", "em", "order"], "one"), r"^samplers\.em\.order: expected a finite number"),
    ("fit unknown field", setter(["samplers", "em", "gains"], 1.0), r"^samplers\.em\.gains: unknown field"),
    (
        "gain_points a string",
        setter(["samplers", "em", "gain_points"], "8"),
        r"^samplers\.em\.gain_points: expected a list",
    ),
    (
        "gain point a list",
        setter(["samplers", "em", "gain_points", 0], [8, 1.0]),
        r"^samplers\.em\.gain_points\[0\]: expected an object",
    ),
    (
        "gain point steps a string",
        setter(["samplers", "em", "gain_points", 1], point(steps="32")),
        r"^samplers\.em\.gain_points\[1\]\.steps: expected an integer >= 1, got '32'",
    ),
    (
        "gain point steps negative",
        setter(["samplers", "em", "gain_points", 0], point(steps=-8)),
        r"^samplers\.em\.gain_points\[0\]\.steps: expected an integer >= 1, got -8",
    ),
    (
        "gain point steps not measured",
        setter(["samplers", "em", "gain_points", 0], point(steps=10)),
        r"^samplers\.em\.gain_points\[0\]\.steps: expected one of the measured step counts",
    ),
    ("gain point without steps", del_point_key("steps"), r"^samplers\.em\.gain_points\[0\]: missing field steps"),
    (
        "gain point variance a string",
        setter(["samplers", "em", "gain_points", 0], point(measured_variance="big")),
        r"^samplers\.em\.gain_points\[0\]\.measured_variance: expected a finite number >= 0",
    ),
    (
        "gain point variance negative",
        setter(["samplers", "em", "gain_points", 0], point(predicted_variance=-1.0)),
        r"^samplers\.em\.gain_points\[0\]\.predicted_variance: expected a finite number >= 0",
    ),
    (
        "gain point levels beyond the ladder",
        setter(["samplers", "em", "gain_points", 0], point(levels=[2, 5])),
        r"^samplers\.em\.gain_points\[0\]\.levels: expected 2 or more levels of the 4 .* got \[2, 5\]",
    ),
    (
        "gain point unknown field",
        setter(["samplers", "em", "gain_points", 0], point(budget=2.0)),
        r"^samplers\.em\.gain_points\[0\]\.budget: unknown field",
    ),
]


@pytest.mark.parametrize("edit, match", [e[1:] for e in BAD_EDITS], ids=[e[0] for e in BAD_EDITS])
def test_from_dict_refuses_each_bad_field_naming_it(shipped, edit, match):
    bad = edited(shipped, edit)
    with pytest.raises(ValueError, match=match):
        Calibration.from_dict(bad)


def test_the_bad_edits_change_the_shipped_file(shipped):
    """Each edit above is an edit (a test must be able to fail): the unedited file loads."""
    cal = Calibration.from_dict(copy.deepcopy(shipped))
    for name, edit, _ in BAD_EDITS:
        assert edited(shipped, edit) != shipped, name
    assert cal.plan(budget=4.0).steps >= 1


@pytest.mark.parametrize(
    "edit, match",
    [
        (setter(["step_error"], NAN), r"step_error: expected a finite number >= 0, got nan"),
        (setter(["times"], [0.9, 0.5, 0.1]), r"times: expected strictly increasing times"),
    ],
    ids=["step_error nan", "times reversed"],
)
def test_load_names_the_file_then_the_field(shipped, tmp_path, edit, match):
    bad = edited(shipped, edit)
    if "times" in match:  # keep the shapes consistent so that the times themselves are at fault
        bad = edited(shipped, setter(["times"], shipped["times"][::-1]))
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError) as e:
        Calibration.load(path)
    assert str(e.value).startswith(f"{path}: {match.split(':')[0]}: "), str(e.value)
    assert "\n" not in str(e.value)


def test_load_refuses_a_folder_and_binary_naming_them(tmp_path):
    folder = tmp_path / "calibration.json"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"calibration\.json: is a folder, not a calibration file$"):
        Calibration.load(folder)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ValueError, match=r"bin\.json: not a calibration file: not UTF-8 text"):
        Calibration.load(binary)


# ----------------------------------------------------------------------------- through the command line


def _ladder_with(tiny_ladder, tmp_path, edit) -> str:
    """A copy of the shared tiny ladder whose calibration.json has had ``edit``."""
    folder = str(tmp_path / "ladder")
    shutil.copytree(tiny_ladder, folder)
    path = os.path.join(folder, "calibration.json")
    with open(path) as f:
        d = json.load(f)
    edit(d)
    with open(path, "w") as f:
        json.dump(d, f)
    return folder


def _tiny_fit_with_points(points):
    """A measured-looking "em" fit for the 2-level tiny ladder, with ``points`` as its gain points."""

    def edit(d):
        fit = SamplerFit(
            sampler="em", family="sde", steps=(4, 8), errors=(2.0, 1.0), errors_se=(0.1, 0.1), ref_steps=20, n=4
        ).to_dict()
        fit["gain_points"] = points
        d["samplers"] = {"em": fit}

    return edit


CLI_EDITS = [
    ("step_error nan", setter(["step_error"], NAN), "step_error: expected a finite number >= 0, got nan"),
    ("step_error negative", setter(["step_error"], -3.0), "step_error: expected a finite number >= 0, got -3.0"),
    ("top_bias negative", setter(["top_bias"], -0.5), "top_bias: expected a finite number >= 0, got -0.5"),
    ("times reversed", reversed_times, "times: expected strictly increasing times"),
    ("time after t1", setter(["times", -1], 5.0), "times: expected times in [t0, t1]"),
    ("names a string", setter(["names"], "width 4"), "names: expected a list of level names"),
    ("n_states fractional", setter(["n_states"], 2.5), "n_states: expected an integer >= 1, got 2.5"),
    ("costs nan", setter(["costs", 0], NAN), "costs[0]: expected finite numbers, got nan"),
    (
        "gain point steps a string",
        _tiny_fit_with_points([{"steps": "8", "measured_variance": 1.0, "predicted_variance": 1.0}]),
        "samplers.em.gain_points[0].steps: expected an integer >= 1, got '8'",
    ),
    (
        "gain point without steps",
        _tiny_fit_with_points([{"measured_variance": 1.0, "predicted_variance": 1.0}]),
        "samplers.em.gain_points[0]: missing field steps",
    ),
    (
        "gain points a number",
        _tiny_fit_with_points(7),
        "samplers.em.gain_points: expected a list of measurements, got 7",
    ),
]

COMMANDS = {
    "sample mlem": ["sample", "--method", "mlem", "--budget", "1.5", "--n", "2"],
    "sample auto": ["sample", "--method", "auto", "--budget", "1.5", "--n", "2"],
    "bench samplers": ["bench", "samplers", "--quick"],
}


def _run(args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)  # no traceback
    return r


@pytest.mark.parametrize("edit, message", [e[1:] for e in CLI_EDITS], ids=[e[0] for e in CLI_EDITS])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_cli_refuses_a_bad_calibration_in_one_line_and_writes_nothing(tiny_ladder, tmp_path, edit, message, command):
    folder = _ladder_with(tiny_ladder, tmp_path, edit)
    before = sorted(os.listdir(folder))
    out = tmp_path / "out"
    out.mkdir()
    suffix = ".json" if command == "bench samplers" else ".png"
    args = COMMANDS[command] + ["--ladder", folder, "--out", out / f"result{suffix}"]
    if command == "bench samplers":
        args += ["--plot", out / "result.png"]
    r = _run(args)
    assert r.exit_code != 0, r.output
    path = os.path.join(folder, "calibration.json")
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    error = [ln for ln in lines if ln.startswith("Error")]
    assert len(error) == 1, r.output
    assert f"{path}: {message}" in error[0], r.output
    assert "Traceback" not in r.output
    assert os.listdir(out) == [] and sorted(os.listdir(folder)) == before


def test_cli_samples_with_the_unedited_copy(tiny_ladder, tmp_path):
    """The same command on the unedited copy runs (the failures above are the edits')."""
    folder = _ladder_with(tiny_ladder, tmp_path, lambda d: None)
    r = _run(
        ["sample", "--method", "mlem", "--budget", "1.5", "--n", "2", "--ladder", folder, "--out", tmp_path / "g.png"]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "g.png").exists()


def test_from_pretrained_names_the_file_and_the_field(tiny_ladder, tmp_path):
    folder = _ladder_with(tiny_ladder, tmp_path, setter(["top_bias"], -1.0))
    with pytest.raises(CheckpointError) as e:
        MultilevelPipeline.from_pretrained(folder)
    assert str(e.value) == (
        f"{os.path.join(folder, 'calibration.json')}: top_bias: expected a finite number >= 0, got -1.0"
    )
    renamed = _ladder_with(tiny_ladder, tmp_path / "b", setter(["names"], ["a", "b"]))
    with pytest.raises(CheckpointError, match=r"calibration\.json: names: made for levels \['a', 'b'\]"):
        MultilevelPipeline.from_pretrained(renamed)
    folder_cal = str(tmp_path / "c")
    shutil.copytree(tiny_ladder, folder_cal)
    os.remove(os.path.join(folder_cal, "calibration.json"))
    os.mkdir(os.path.join(folder_cal, "calibration.json"))
    with pytest.raises(CheckpointError) as e:
        MultilevelPipeline.from_pretrained(folder_cal)
    assert str(e.value) == f"{os.path.join(folder_cal, 'calibration.json')}: is a folder, not a calibration file"


# ----------------------------------------------------------------------------- what the code writes loads back


def _round_trip(cal: Calibration, tmp_path) -> Calibration:
    path = tmp_path / "cal.json"
    cal.save(path)
    back = Calibration.load(path)
    assert back == cal
    assert json.loads(path.read_text()) == json.loads(json.dumps(back.to_dict()))
    return back


@pytest.mark.parametrize(
    "kw",
    [
        dict(timing="given"),
        dict(timing="given", reference="true"),
        dict(timing="flops"),
        dict(timing="wall", fit_gamma=False, step_error=False),
    ],
    ids=["given", "given with a reference", "flops", "wall without gamma or step error"],
)
def test_calibrations_calibrate_writes_load_back(tmp_path, kw):
    P = htmc(2.0, dim=4, levels=4, seed=0)
    kw = dict(kw)
    if kw.pop("reference", None):
        kw["reference"] = P.true_drift
    cal = calibrate(
        P.ladder,
        P.initial_state(16, seed=1),
        t0=P.t0,
        t1=P.t1,
        diffusion=P.diffusion,
        steps=36,
        generator=torch.Generator().manual_seed(2),
        **kw,
    )
    back = _round_trip(cal, tmp_path)
    if cal.step_error is not None:
        assert back.plan(budget=4.0).to_dict() == cal.plan(budget=4.0).to_dict()


def test_the_shipped_calibration_loads_unchanged(shipped, tmp_path):
    cal = Calibration.load(SHIPPED_CAL)
    assert json.loads(json.dumps(cal.to_dict())) == shipped  # every field as in the file, the sampler fits included
    assert set(cal.samplers) == {"em", "ddim", "euler_ode", "dpmpp_2m"}
    _round_trip(cal, tmp_path)


def test_the_tiny_ladders_calibration_loads(tiny_ladder, tmp_path):
    cal = Calibration.load(os.path.join(tiny_ladder, "calibration.json"))
    assert cal.timing == "flops" and cal.n_levels == 2
    _round_trip(cal, tmp_path)


def test_measured_sampler_fits_load_back(tmp_path):
    """measure_samplers' fits (gain points included) on the shipped calibration round-trip through the file."""
    cal = Calibration.load(SHIPPED_CAL)

    def run(sampler, steps, plan=None):
        ref = torch.linspace(0, 1, 12, dtype=torch.float64).reshape(4, 3)
        x = ref + (2.0 / steps if steps < 64 else 0.0)
        if plan is not None:
            x = x + 0.01 * torch.randn(4, 3, generator=torch.Generator().manual_seed(steps), dtype=torch.float64)
        return x

    fits = measure_samplers(
        run, cal, {"em": "sde", "ddim": "ode"}, n=4, steps=(4, 8, 16), ref_steps=64, gain_steps=(8,), cheapest=0.01
    )
    assert all(len(f.gain_points) == 1 for f in fits.values())
    cal.samplers = fits
    back = _round_trip(cal, tmp_path)
    assert back.samplers["em"].gain_at(8) == pytest.approx(fits["em"].gain_at(8))
    assert np.isfinite(back.plan(budget=4.0, sampler="ddim").error)


def test_a_multilevel_model_calibration_loads_back(tmp_path):
    """MultilevelModel.calibrate's calibration (its own call grid, no step error) round-trips through the file."""
    diffusers = pytest.importorskip("diffusers")
    from conftest import tiny_dit

    from multilevel_em.diffusion import MultilevelModel

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=[8], latent_channels=4, norm_num_groups=8, layers_per_block=1)
    models = [tiny_dit(1, 1, 1), tiny_dit(1, 2, 2), tiny_dit(2, 2, 3)]
    pipe = diffusers.DiTPipeline(transformer=models[-1], vae=vae.eval(), scheduler=diffusers.DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    mm = MultilevelModel(models, scheduler=pipe.scheduler, generator=torch.Generator().manual_seed(0))
    pipe.transformer = mm
    kw = dict(num_inference_steps=6, guidance_scale=4.0, output_type="latent")
    cal = mm.calibrate(lambda: pipe(class_labels=[1, 2], generator=torch.Generator().manual_seed(0), **kw))
    assert cal.step_error is None and cal.timing == "given"
    _round_trip(cal, tmp_path)

"""multilevel_em.bench.cache: the resumable per-unit store behind ``--cache-dir`` and the ``--shard`` split."""

import json

import pytest
import torch

from multilevel_em.bench.cache import RunCache, check_shard, jsonable, shard_units


def test_units_round_trip_through_the_folder_and_a_new_cache_finds_them(tmp_path):
    folder = str(tmp_path / "cache")
    c = RunCache(folder, {"n": 4, "ladder": "x"})
    assert "run a" not in c
    c.put("run a", {"features": torch.arange(6.0).reshape(3, 2)}, {"top": 2.5, "report": {"steps": 3}})
    again = RunCache(folder, {"n": 4, "ladder": "x"})  # a new process resuming
    assert "run a" in again and "run b" not in again
    tensors, meta = again.get("run a")
    assert torch.equal(tensors["features"], torch.arange(6.0).reshape(3, 2))
    assert meta == {"top": 2.5, "report": {"steps": 3}, "key": "run a", "depends": None}


def test_a_unit_made_from_other_inputs_is_stale(tmp_path):
    c = RunCache(str(tmp_path / "cache"), {})
    c.put("run a", {"x": torch.ones(1)}, {}, depends={"levels": ["abc"]})
    again = RunCache(str(tmp_path / "cache"), {})
    assert again.fresh("run a", {"levels": ["abc"]})
    assert not again.fresh("run a", {"levels": ["abd"]}) and not again.fresh("run b", {"levels": ["abc"]})


def test_a_folder_of_other_settings_or_foreign_files_is_refused(tmp_path):
    folder = tmp_path / "cache"
    RunCache(str(folder), {"n": 4, "seed": 0})
    with pytest.raises(ValueError, match=r"cache_dir: .* other settings \(differing: seed\)"):
        RunCache(str(folder), {"n": 4, "seed": 1})
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="cache_dir: .* not empty and holds no settings.json"):
        RunCache(str(other), {"n": 4})
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cache_dir: .* not a folder"):
        RunCache(str(tmp_path / "file"), {})
    (folder / "settings.json").write_text("{not json")
    with pytest.raises(ValueError, match="cache_dir: .*settings.json is not readable JSON"):
        RunCache(str(folder), {"n": 4, "seed": 0})


def test_a_damaged_unit_is_an_error_naming_its_file(tmp_path):
    folder = str(tmp_path / "cache")
    c = RunCache(folder, {})
    c.put("run a", {"x": torch.ones(2)}, {})
    path = c.path("run a")
    with open(path, "wb") as f:
        f.write(b"\x00\x01 truncated")
    with pytest.raises(ValueError, match="cache_dir: .* is damaged"):
        RunCache(folder, {}).get("run a")
    meta = path[: -len(".safetensors")] + ".json"
    c.put("run a", {"x": torch.ones(2)}, {})
    with open(meta, "w") as f:
        json.dump({"key": "run b"}, f)
    with pytest.raises(ValueError, match="holds 'run b', not 'run a'"):
        RunCache(folder, {}).get("run a")


def test_memory_only_cache_keeps_units_without_a_folder():
    c = RunCache(None, {"n": 1})
    c.put("k", {"x": torch.zeros(1)}, {"a": 1})
    assert "k" in c and c.get("k")[1]["a"] == 1
    with pytest.raises(ValueError, match="no finished unit 'j'"):
        c.get("j")


def test_shards_partition_the_units_and_balance_their_costs():
    units = [f"u{i}" for i in range(7)]
    costs = [10.0, 1.0, 1.0, 1.0, 5.0, 4.0, 1.0]
    shares = [shard_units(units, costs, i, 2) for i in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(units)  # every unit once
    assert all(s == [u for u in units if u in s] for s in shares)  # original order
    loads = [sum(costs[units.index(u)] for u in s) for s in shares]
    assert abs(loads[0] - loads[1]) <= max(costs) and sorted(loads) == [11.0, 12.0]
    assert shard_units(units, costs, 0, 1) == units
    with pytest.raises(ValueError, match="costs: expected one"):
        shard_units(units, costs[:-1], 0, 2)


@pytest.mark.parametrize("bad", ["0/2", "3/2", "1", "a/b", "1/0", "-1/2"])
def test_check_shard_refuses_what_is_not_i_of_k(bad):
    with pytest.raises(ValueError, match="shard: expected 'i/k'"):
        check_shard(bad)


def test_check_shard_reads_i_of_k():
    assert check_shard("2/3") == (1, 3) and check_shard(None) == (None, None)


def test_jsonable_turns_tensors_and_numpy_into_plain_json():
    import numpy as np

    out = jsonable({"a": torch.tensor([1.0, 2.0]), "b": np.float64(0.5), "c": (1, np.int64(2)), 3: None})
    assert out == {"a": [1.0, 2.0], "b": 0.5, "c": [1, 2], "3": None}
    json.dumps(out)


def test_claims_let_processes_share_a_folder(tmp_path):
    import os
    import subprocess
    import sys

    c = RunCache(str(tmp_path / "cache"), {})
    assert c.claim("a") and c.holder("a") == os.getpid() and not c.claimed_elsewhere("a")
    c.release("a")
    assert c.holder("a") is None
    lock = c.path("b")[: -len(".safetensors")] + ".lock"
    with open(lock, "w") as f:
        f.write("1")  # a live process that is not this one (init)
    assert c.claimed_elsewhere("b") and not c.claim("b")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with open(lock, "w") as f:
        f.write(dead.stdout.strip())  # a process that has exited: its lock is stale
    assert not c.claimed_elsewhere("b") and c.claim("b") and c.holder("b") == os.getpid()
    assert RunCache(None, {}).claim("x")

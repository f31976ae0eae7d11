"""Writing outputs: atomic, strict JSON, a full disk as one line naming the file."""
import errno
import json
import math
import subprocess

import pandas as pd
import pytest
import torch

from cglib import tables


@pytest.fixture
def tiny_fs(tmp_path):
    """A 256 KiB tmpfs where the test may mount one (root), else None."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        yield None
        return
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)  # lazy: a failed writer may still hold a handle


def test_full_disk_is_one_line_naming_the_file_and_leaves_no_temp(tiny_fs, tmp_path, monkeypatch):
    if tiny_fs is None:  # no mount here: simulate what a full disk does to torch.save
        def full(obj, f):
            raise RuntimeError("basic_ios::clear: iostream error")
        monkeypatch.setattr(torch, "save", full)
        monkeypatch.setattr(tables.shutil, "disk_usage", lambda p: type("U", (), {"free": 0})())
        where = tmp_path
    else:
        where = tiny_fs
    target = where / "ckpt.pt"
    with pytest.raises(tables.WriteError) as err:
        tables.save_torch({"w": torch.zeros(1_000_000)}, target)
    msg = str(err.value)
    assert msg.startswith(f"{target}: could not be written: no space left") and "\n" not in msg
    assert not target.exists() and list(where.iterdir()) == []  # no *.tmp left behind


def test_enospc_from_any_writer_names_the_file(tmp_path, monkeypatch):
    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    with pytest.raises(tables.WriteError, match=r"t\.parquet: could not be written: no space left"):
        tables.write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")
    assert list(tmp_path.iterdir()) == []


def test_json_is_strict(tmp_path):
    tables.write_json({"a": math.nan, "b": [math.inf, 1.5], "c": {"d": -math.inf}}, tmp_path / "x.json")
    text = (tmp_path / "x.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {"a": None, "b": [None, 1.5], "c": {"d": None}}


def test_damaged_parquet_is_one_line_naming_file_and_stage(tmp_path):
    path = tmp_path / "t.parquet"
    tables.write_parquet(pd.DataFrame({"a": range(100)}), path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(tables.DamagedFile) as err:
        tables.read_parquet(path, "the corrupt stage")
    assert str(err.value).startswith(f"{path}: damaged") and str(err.value).endswith("rerun the corrupt stage")
    with pytest.raises(tables.DamagedFile, match="not found; run the corrupt stage first"):
        tables.read_parquet(tmp_path / "none.parquet", "the corrupt stage")


def test_damage_is_judged_by_the_envelope_of_each_kind(tmp_path):
    """Intact files pass; each kind cut short (as a kill or a full disk leaves it) is named."""
    pq, pt, js = tmp_path / "t.parquet", tmp_path / "d.pt", tmp_path / "r.json"
    tables.write_parquet(pd.DataFrame({"a": range(50)}), pq)
    tables.save_torch({"x": torch.arange(1000)}, pt)
    tables.write_json({"a": 1}, js)
    assert [tables.damage(p) for p in (pq, pt, js, tmp_path / "missing.parquet")] == [None] * 4
    for path, why in ((pq, "not a complete Parquet file"), (pt, "not a complete torch file"), (js, "not valid JSON")):
        whole = path.read_bytes()
        for cut in (len(whole) - 2, len(whole) // 2, 5, 0):  # lost its last bytes, half, nearly all
            path.write_bytes(whole[:cut])
            assert tables.damage(path) == why, (path, cut)
    pq.write_bytes(b"PAR1")  # head and tail but no table
    assert tables.damage(pq) == "not a complete Parquet file"


def test_share_crossing_needs_hold_steps_below_and_not_a_dip_at_the_end():
    def rows(values, null=-1):
        return [dict(run="r", experiment="E2", metric="f_pristine", null=null, step=s, value=v)
                for s, v in enumerate(values)]
    m = pd.DataFrame(rows([.9, .8, .4, .7, .45, .4, .3, .2, .1, .6]) + rows([.9, .8, .7, .6, .6, .6, .6, .6, .6, .4], 0))
    out = tables.share_crossings(m, hold=3)["r"]
    assert out["real"] == {"f_pristine_at_0": 0.9, "crossing_step": 4}  # one dip at step 2 is not a crossing
    assert out["null0"]["crossing_step"] is None  # below only at the last step


def test_designation_sizes_count_pristine_and_corrupt_examples():
    ex = pd.DataFrame({"example": range(5), "corrupt": [True, False, False, True, False]})
    assert tables.designation_sizes(ex) == {"n_pristine": 3, "n_corrupt": 2}
    assert tables.designation_sizes(ex.assign(corrupt=False)) == {"n_pristine": 5, "n_corrupt": 0}


def test_model_label_names_the_cnn_head():
    assert tables.model_label({"name": "cnn", "channels": [4, 8]}) == "cnn-4x8"
    assert tables.model_label({"name": "cnn", "channels": [4, 8], "pool": "avg"}) == "cnn-4x8"
    assert tables.model_label({"name": "cnn", "channels": [4, 8], "pool": "none"}) == "cnn-4x8-flat"
    assert tables.model_label({"name": "mlp", "hidden": [256]}) == "mlp-256"

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
    subprocess.run(["umount", str(mnt)], check=False)


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

"""Crash safety: a write that dies half-way leaves the previous file intact and no temp file."""

import json

import pytest

from fl_defense import io


class Boom(Exception):
    pass


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    io.write_jsonl(path, [{"round": 1}])
    real_fsync = io.os.fsync

    def dying_fsync(fd):  # the process "dies" after part of the new content was written
        raise Boom("killed")

    monkeypatch.setattr(io.os, "fsync", dying_fsync)
    with pytest.raises(Boom):
        io.write_jsonl(path, [{"round": 1}, {"round": 2}])
    monkeypatch.setattr(io.os, "fsync", real_fsync)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"round": 1}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_jsonl_and_json_roundtrip(tmp_path):
    import numpy as np

    path = tmp_path / "a" / "rows.jsonl"
    io.write_jsonl(path, [{"x": np.float32(1.5)}, {"x": np.int64(2)}])
    assert io.read_jsonl(path) == [{"x": 1.5}, {"x": 2}]
    io.write_json(tmp_path / "c.json", {"a": np.arange(3)})
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": [0, 1, 2]}
    assert io.read_jsonl(tmp_path / "missing.jsonl") == []


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_permissions_of_the_users_umask(tmp_path, umask, mode):
    import os
    import stat

    old = os.umask(umask)
    try:
        assert io.current_umask() == umask
        path = io.write_json(tmp_path / "summary.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode

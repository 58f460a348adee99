"""files.py: what a killed, full-disk or foreign run leaves behind, and the JSONL reader's tolerance of a BOM."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from st_poetry.config import UserError
from st_poetry.files import atomic_output_dir, decode_text, read_jsonl

DEAD_PID = 999_999_999  # above Linux's pid_max (2**22): never a running process


def _write(out: Path, marker: str, text: str) -> None:
    with atomic_output_dir(out, marker) as tmp:
        (tmp / "data.txt").write_text(text)
        (tmp / marker).write_text("{}")


def _siblings(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_partial_folders_of_killed_runs_are_cleaned_on_the_next_run(tmp_path):
    out = tmp_path / "out"
    for name in (f".out.partial-{DEAD_PID}-0a1b2c3d", ".out.partial-k3x9_q2z"):  # a killed run, an old mkdtemp name
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.jsonl").write_text("half")
    live = tmp_path / f".out.partial-{os.getpid()}-feedbeef"  # a run still writing (this process): kept
    live.mkdir()
    _write(out, "stats.json", "new")
    assert _siblings(tmp_path) == [live.name, "out"]
    assert (out / "data.txt").read_text() == "new"


def test_a_kill_between_the_two_renames_is_undone(tmp_path, capsys):
    out = tmp_path / "out"
    _write(out, "stats.json", "old")
    # What a kill right after `out -> .out.old` leaves: no out, the old set aside, the new one complete but unmoved.
    out.rename(tmp_path / ".out.old")
    (tmp_path / f".out.partial-{DEAD_PID}-0a1b2c3d").mkdir()

    with pytest.raises(RuntimeError), atomic_output_dir(out, "stats.json"):
        raise RuntimeError("the next run fails too")
    assert _siblings(tmp_path) == ["out"]  # the old output is back, nothing else is left
    assert (out / "data.txt").read_text() == "old"
    assert "restored" in capsys.readouterr().out

    # A kill after the second rename leaves .out.old beside the new out: it is dropped.
    (tmp_path / ".out.old").mkdir()
    _write(out, "stats.json", "newer")
    assert _siblings(tmp_path) == ["out"] and (out / "data.txt").read_text() == "newer"


def test_output_folders_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        _write(tmp_path / "out", "stats.json", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755  # mkdtemp made it 0o700


def test_a_full_disk_is_one_line_and_keeps_the_old_output(tmp_path):
    out = tmp_path / "out"
    _write(out, "stats.json", "old")
    full = pytest.raises(UserError, match=rf"could not write {out}: No space left on device; .* left as it was")
    with full, atomic_output_dir(out, "stats.json"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert _siblings(tmp_path) == ["out"] and (out / "data.txt").read_text() == "old"


def test_an_unwritable_parent_is_one_line(tmp_path, monkeypatch):
    def denied(self, *args, **kwargs):  # chmod does not stop root, so the refusal is simulated
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(UserError, match=r"cannot create .*out: Permission denied"):
        _write(tmp_path / "locked" / "out", "stats.json", "x")


def test_jsonl_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes('\ufeff{"anchor": "明月"}\n{"anchor": "清泉"}\n'.encode())
    assert list(read_jsonl(path)) == [(1, {"anchor": "明月"}), (2, {"anchor": "清泉"})]


def test_decode_text_names_the_source():
    assert decode_text("\ufeff明月".encode(), "q.txt") == "明月"
    with pytest.raises(UserError, match=r"^q\.txt: not UTF-8 text"):
        decode_text("明月".encode("gbk"), "q.txt")

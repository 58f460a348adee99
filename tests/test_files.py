"""files.py: what a killed, full-disk or foreign run leaves behind, and the JSONL reader's tolerance of a BOM."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from st_poetry.core.errors import UserError
from st_poetry.core.files import atomic_output_dir, decode_text, read_jsonl, recover_set_aside, replaced_when_complete


def _write(out: Path, marker: str, text: str) -> None:
    with atomic_output_dir(out, marker) as tmp:
        (tmp / "data.txt").write_text(text)
        (tmp / marker).write_text("{}")


def _siblings(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def _killed_while_writing(out: Path, kill_at: str) -> None:
    """Run a writer of `out` in another process and SIGKILL it from inside, at `kill_at`: "body" (while the
    files are written) or "rename" (between moving the old folder aside and moving the new one in)."""
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from st_poetry.core.files import atomic_output_dir\n"
        "out, kill_at = Path(sys.argv[1]), sys.argv[2]\n"
        "rename = Path.rename\n"
        "def rename_then_die(self, target):\n"
        "    rename(self, target)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "if kill_at == 'rename':\n"
        "    Path.rename = rename_then_die\n"
        "with atomic_output_dir(out, 'stats.json') as tmp:\n"
        "    (tmp / 'data.txt').write_text('new')\n"
        "    (tmp / 'stats.json').write_text('{}')\n"
        "    if kill_at == 'body':\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(out), kill_at], capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr


def test_partial_folders_of_killed_runs_are_cleaned_on_the_next_run(tmp_path):
    out = tmp_path / "out"
    _killed_while_writing(out, "body")
    assert len(list(tmp_path.glob(".out.partial-*"))) == 1  # what the kill left
    legacy = tmp_path / ".out.partial-k3x9_q2z"  # tempfile.mkdtemp's name, from earlier versions
    legacy.mkdir()
    live = tmp_path / f".out.partial-{os.getpid()}-feedbeef"  # a run still writing (this process): kept
    live.mkdir()
    _write(out, "stats.json", "next")
    assert _siblings(tmp_path) == [live.name, "out"]
    assert (out / "data.txt").read_text() == "next"


def test_a_kill_between_the_two_renames_is_undone(tmp_path, capsys):
    out = tmp_path / "out"
    _write(out, "stats.json", "old")
    _killed_while_writing(out, "rename")
    assert not out.exists() and (tmp_path / ".out.old").is_dir()  # what the kill left

    with pytest.raises(RuntimeError), atomic_output_dir(out, "stats.json"):
        raise RuntimeError("the next run fails too")
    assert _siblings(tmp_path) == ["out"]  # the old output is back, nothing else is left
    assert (out / "data.txt").read_text() == "old"
    assert "restored" in capsys.readouterr().err

    # A kill after the second rename leaves .out.old beside the new out: it is dropped.
    (tmp_path / ".out.old").mkdir()
    _write(out, "stats.json", "newer")
    assert _siblings(tmp_path) == ["out"] and (out / "data.txt").read_text() == "newer"


def _run_folder(out: Path, label: str, *, complete: bool = True) -> dict[str, bytes]:
    """A training run's folder: checkpoints, and the final model when `complete`; returns its files' bytes."""
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-2" / "model.safetensors").write_bytes(f"{label} weights".encode())
    if complete:
        (out / "model.safetensors").write_bytes(f"{label} final".encode())
        (out / "modules.json").write_text("[]")
    return _tree(out)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_an_earlier_run_is_replaced_only_by_a_complete_one(tmp_path, capsys):
    out = tmp_path / "model"
    earlier = _run_folder(out, "earlier")
    with pytest.raises(RuntimeError), replaced_when_complete(out, "modules.json"):
        assert not out.exists()  # the stage finds `out` empty
        _run_folder(out, "failed", complete=False)
        raise RuntimeError("the new run fails")
    assert _tree(out) == earlier and _siblings(tmp_path) == ["model"]  # back whole; the failed run's files gone
    assert "put the earlier run back" in capsys.readouterr().err

    with replaced_when_complete(out, "modules.json"):
        assert (tmp_path / ".model.earlier").is_dir() and _tree(tmp_path / ".model.earlier") == earlier
        newer = _run_folder(out, "newer")
    assert _tree(out) == newer and _siblings(tmp_path) == ["model"]


def test_a_run_killed_while_replacing_an_earlier_one_is_settled_on_the_next_call(tmp_path):
    out, aside = tmp_path / "model", tmp_path / ".model.earlier"
    earlier = _run_folder(aside, "earlier")
    _run_folder(out, "killed", complete=False)  # what a kill during training leaves
    recover_set_aside(out, "modules.json")
    assert _tree(out) == earlier and _siblings(tmp_path) == ["model"]

    # killed after the new run completed (or the run was resumed by hand and completed): the new run stays
    shutil.rmtree(out)
    newer = _run_folder(out, "newer")
    _run_folder(aside, "earlier")
    recover_set_aside(out, "modules.json")
    assert _tree(out) == newer and _siblings(tmp_path) == ["model"]


def test_output_folders_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        _write(tmp_path / "out", "stats.json", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755  # mkdtemp made it 0o700


def test_output_files_follow_the_umask_whatever_mode_their_writer_gave(tmp_path):
    """safetensors writes through a 0600 temporary file: what the stage publishes gets the umask all the same."""
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not ours")
    outside.chmod(0o600)
    previous = os.umask(0o022)
    try:
        with atomic_output_dir(tmp_path / "out", "stats.json") as tmp:
            (tmp / "sub").mkdir(mode=0o700)
            for name, mode in (("weights", 0o600), ("sub/weights", 0o600), ("run.sh", 0o700), ("stats.json", 0o644)):
                (tmp / name).write_text("x")
                (tmp / name).chmod(mode)
            (tmp / "link").symlink_to(outside)
    finally:
        os.umask(previous)
    modes = {name: stat.S_IMODE((tmp_path / "out" / name).lstat().st_mode) for name in ("weights", "sub/weights")}
    assert modes == {"weights": 0o644, "sub/weights": 0o644}
    assert stat.S_IMODE((tmp_path / "out" / "sub").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "run.sh").stat().st_mode) == 0o755  # still executable
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600  # a link's target is not ours to change


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

"""Small file helpers every stage shares: all-or-nothing output folders and JSONL with clear errors.

Stdlib only, so the light `prepare` stage can use them.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from st_poetry.core.errors import MACHINE_ERRNOS, UserError, describe_os_error
from st_poetry.core.log import get_logger

logger = get_logger(__name__)
PARTIAL = ".partial-"


def _partials(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{glob.escape(out.name)}{PARTIAL}*"))


def _writer_alive(partial: Path) -> bool:
    """A partial folder is named after the process writing it (.X.partial-PID-RANDOM): is that process running?"""
    pid = partial.name.rsplit(PARTIAL, 1)[1].split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def recover_interrupted_write(out: Path) -> None:
    """Undo what a killed `atomic_output_dir` left next to `out`: partial folders of writers no longer running
    go, and a `.X.old` is put back when the kill came between its two renames (X gone) or dropped (X in place)."""
    live = False
    for partial in _partials(out):
        if _writer_alive(partial):
            live = True
        else:
            logger.debug(f"removing {partial}, left by a writer no longer running")
            shutil.rmtree(partial, ignore_errors=True)
    old = out.with_name(f".{out.name}.old")
    if not old.is_dir() or live:
        return
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.rename(out)
        logger.info(f"note: restored {out} from {old.name}, left by a run that was stopped while replacing it")


def check_output_dir(out: str | Path, marker: str, *, merge: bool = False) -> Path:
    """The check `atomic_output_dir` makes before writing `out`, for a stage to call before its slow work too:
    a foreign non-empty folder is then refused at once, not after hours of encoding. Cleans up what a killed
    writer left first (`recover_interrupted_write`), as that can put an output back in place."""
    out = Path(out)
    recover_interrupted_write(out)
    if not merge and out.exists() and any(out.iterdir()) and not (out / marker).exists():
        raise UserError(f"refusing to overwrite {out}: it is not empty and has no {marker} (not written by this stage)")
    return out


def apply_umask(folder: str | Path) -> None:
    """Give `folder` and everything in it the modes the user's umask gives a new file or folder.

    Some writers do not: safetensors writes through a 0600 temporary file, so a model saved by one user could not
    be loaded by a server running as another. Executable files stay executable; links are left alone.
    """
    umask = current_umask()
    for root, _, files in os.walk(folder):  # does not follow links into other folders
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            path = os.path.join(root, name)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode):
                os.chmod(path, (0o777 if info.st_mode & stat.S_IXUSR else 0o666) & ~umask)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (setting it, even for a moment, would
    apply to files other threads create meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


@contextmanager
def atomic_output_dir(out: str | Path, marker: str, *, merge: bool = False, last: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success its content becomes `out`, on failure it is removed.

    An interrupted run therefore never leaves a half-written set that looks complete, and what a killed run left
    is cleaned up by the next (`recover_interrupted_write`). By default the new folder replaces `out` whole, and
    an existing `out` is replaced only if it holds `marker` (a file this stage writes last), so a folder of the
    user's that st_poetry did not write is never deleted. The folder and its files get the user's umask, like any
    they create (`apply_umask`). A full disk or a permission error is a UserError naming `out`.

    `merge=True` is for a stage whose folder holds more than this one output (train: the final model beside
    its checkpoints and logs): the entries are moved into `out`, replacing same-named ones and leaving the
    others. `marker` (and the names in `last`, moved just before it) are taken out of `out` first and moved in
    at the end, so `out` never holds the marker while only part of the set is there.
    """
    out = check_output_dir(out, marker, merge=merge)
    tmp = out.with_name(f".{out.name}{PARTIAL}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()  # not tempfile.mkdtemp: its folders are 0700 whatever the umask
    except OSError as error:
        raise UserError(f"cannot create {out}: {describe_os_error(error)}") from None
    logger.debug(f"writing {out} through {tmp.name}")
    try:
        yield tmp
        apply_umask(tmp)
        if merge:
            _move_into(tmp, out, (*last, marker))
        elif out.exists():
            old = out.with_name(f".{out.name}.old")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
        logger.debug(f"{out} is complete")
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError) and error.errno in MACHINE_ERRNOS:
            raise UserError(f"could not write {out}: {describe_os_error(error)}; {out} was left as it was") from None
        raise


def _move_into(tmp: Path, out: Path, last: Sequence[str]) -> None:
    """Move every entry of `tmp` into `out`, the names in `last` removed from `out` first and moved in last."""
    out.mkdir(exist_ok=True)
    for name in reversed(last):
        (out / name).unlink(missing_ok=True)
    for entry in sorted(tmp.iterdir(), key=lambda path: last.index(path.name) + 1 if path.name in last else 0):
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        entry.replace(target)
    tmp.rmdir()


def _set_aside_name(out: Path) -> Path:
    return out.with_name(f".{out.name}.earlier")


def recover_set_aside(out: str | Path, marker: str) -> None:
    """Settle what a killed `replaced_when_complete` left: the earlier run set aside comes back while `out`
    lacks `marker` (the new run never completed; its files go), and is dropped once `out` holds it."""
    out = Path(out)
    aside = _set_aside_name(out)
    if not aside.is_dir():
        return
    if (out / marker).is_file():
        shutil.rmtree(aside)
        return
    shutil.rmtree(out, ignore_errors=True)
    if out.exists():
        raise UserError(f"cannot put back the earlier run in {aside}: {out} could not be removed")
    aside.rename(out)
    logger.info(f"note: put the earlier run back in {out} from {aside.name}: the run replacing it never completed")


@contextmanager
def replaced_when_complete(out: str | Path, marker: str) -> Iterator[None]:
    """Clear `out` for a stage that refuses a non-empty folder, without losing the earlier run in it before
    the new one is complete: the earlier run is set aside (a hidden sibling, `.X.earlier`), removed only when
    the stage returns, and put back whole, the failed attempt's files removed, when it raises. A run killed in
    between leaves the sibling, which the next call settles (`recover_set_aside`)."""
    out = Path(out)
    aside = _set_aside_name(out)
    recover_set_aside(out, marker)
    if not out.exists():
        yield
        return
    out.rename(aside)
    try:
        yield
    except BaseException:
        recover_set_aside(out, marker)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def sha256(path: str | Path) -> str:
    """The file's sha256 as hex, read in chunks (model files run to gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False))
            handle.write("\n")


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed value) for non-blank lines; a malformed line names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    with open(path, encoding="utf-8-sig") as handle:  # -sig: a byte-order mark, as some editors write, is fine
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    raise UserError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        except UnicodeDecodeError as error:
            raise not_utf8(path, error) from None


def not_utf8(source: str | Path, error: UnicodeDecodeError) -> UserError:
    return UserError(f"{source}: not UTF-8 text ({error.reason} at byte {error.start})")


def decode_text(data: bytes, source: str | Path) -> str:
    """UTF-8 bytes (a byte-order mark allowed) as text; anything else is a one-line error naming `source`."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise not_utf8(source, error) from None


def write_json(path: str | Path, value: Any) -> None:
    Path(path).write_text(json.dumps(value, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

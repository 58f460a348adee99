"""Small file helpers every stage shares: all-or-nothing output folders and JSONL with clear errors.

Stdlib only, so the light `prepare` stage can use them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from st_poetry.config import UserError


@contextmanager
def atomic_output_dir(out: str | Path, marker: str, *, merge: bool = False, last: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success its content becomes `out`, on failure it is removed.

    An interrupted run therefore never leaves a half-written set that looks complete. By default the new
    folder replaces `out` whole, and an existing `out` is replaced only if it holds `marker` (a file this stage
    writes last), so a folder of the user's that st_poetry did not write is never deleted.

    `merge=True` is for a stage whose folder holds more than this one output (train: the final model beside
    its checkpoints and logs): the entries are moved into `out`, replacing same-named ones and leaving the
    others. `marker` (and the names in `last`, moved just before it) are taken out of `out` first and moved in
    at the end, so `out` never holds the marker while only part of the set is there.
    """
    out = Path(out)
    if not merge and out.exists() and any(out.iterdir()) and not (out / marker).exists():
        raise UserError(f"refusing to overwrite {out}: it is not empty and has no {marker} (not written by this stage)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        if merge:
            _move_into(tmp, out, (*last, marker))
        elif out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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
    with open(path, encoding="utf-8") as handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    raise UserError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        except UnicodeDecodeError as error:
            raise UserError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def write_json(path: str | Path, value: Any) -> None:
    Path(path).write_text(json.dumps(value, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

"""Fetch the public raw data at pinned versions into data/raw/ (the default RAW_DATA): `just download`.

    just download                          # chinese-poetry-and-prose, CCPM and chinese-poetry from their upstreams
    just download --from ../shared/data    # copy from a local folder instead (machines without internet)

`sources.json` pins each source to a commit of its upstream repository and lists every file with its sha256 and
size; a file is fetched as it is stored at that commit. A download goes to `NAME.part` and takes its name only
once its checksum matches, so an interrupted run leaves no file that looks complete: the next run skips the
files already there and resumes a `.part` where it stopped (an HTTP Range request). Stdlib + tqdm only.
"""

from __future__ import annotations

import http.client
import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tqdm import tqdm

from st_poetry.config import DownloadConfig, UserError, run_cli
from st_poetry.files import sha256

CHUNK = 1 << 16


def load_manifest(path: str | None) -> dict[str, dict[str, Any]]:
    """The pinned sources: name -> {repo, commit, files: [{path, to, sha256, size}]}."""
    manifest = Path(path) if path else Path(__file__).with_name("sources.json")
    try:
        return json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{manifest}: not a readable sources manifest ({error})") from None


def file_url(mirror: str, source: dict[str, Any], entry: dict[str, Any]) -> str:
    return f"{mirror.rstrip('/')}/{source['repo']}/{source['commit']}/{urllib.parse.quote(entry['path'])}"


def fetch(url: str, target: Path, entry: dict[str, Any], bar: tqdm, config: DownloadConfig) -> None:
    """Download `url` to `target` through `target.part`, resuming it; check size and sha256, then rename."""
    part = target.with_name(target.name + ".part")
    for attempt in range(1, config.retries + 1):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=config.timeout) as response:
                if have and response.status != 206:  # the server ignored the range: start again
                    bar.update(-have)
                    have = 0
                with open(part, "ab" if have else "wb") as handle:
                    while chunk := response.read(CHUNK):
                        handle.write(chunk)
                        bar.update(len(chunk))
        except urllib.error.HTTPError as error:
            if error.code == 416 and have == entry["size"]:  # already whole: nothing left to send
                break
            raise UserError(f"{url}: HTTP {error.code} {error.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:  # refused, reset, cut short
            reason = getattr(error, "reason", error)
            if attempt == config.retries:
                got = part.stat().st_size if part.exists() else 0
                raise UserError(
                    f"{url}: {reason} ({got:,} of {entry['size']:,} bytes after {attempt} tries; run again to resume)"
                ) from None
            time.sleep(config.retry_wait)
            continue
        if part.stat().st_size >= entry["size"]:
            break
        if attempt == config.retries:
            raise UserError(
                f"{url}: transfer interrupted at {part.stat().st_size:,} of {entry['size']:,} bytes after "
                f"{attempt} tries; run again to resume"
            )
        time.sleep(config.retry_wait)
    _accept(part, target, entry, url)


def _accept(part: Path, target: Path, entry: dict[str, Any], origin: str) -> None:
    """Rename `part` to `target` if its checksum is the pinned one; otherwise remove it and say so."""
    digest = sha256(part)
    if digest != entry["sha256"]:
        part.unlink()
        raise UserError(
            f"{origin}: checksum mismatch for {target} (sha256 {digest}, pinned {entry['sha256']}); "
            "the file was removed"
        )
    part.rename(target)


def download(config: DownloadConfig) -> dict[str, Any]:
    """Bring every file of the chosen sources into `config.out/<source>/`; returns what was done per source."""
    manifest = load_manifest(config.manifest)
    unknown = sorted(set(config.sources) - set(manifest))
    if unknown:
        raise UserError(f"unknown source(s) {', '.join(unknown)}; known: {', '.join(manifest)}")
    if config.from_dir:
        return copy_sources(config, manifest)
    out = Path(config.out)
    todo: list[tuple[str, dict, Path]] = []
    report: dict[str, Any] = {}
    for name in config.sources:
        source = manifest[name]
        done = 0
        for entry in source["files"]:
            target = out / name / entry["to"]
            if target.is_file() and target.stat().st_size == entry["size"] and sha256(target) == entry["sha256"]:
                done += 1
            else:
                todo.append((name, entry, target))
        report[name] = {"repo": source["repo"], "commit": source["commit"], "files": len(source["files"])}
        report[name]["already_there"] = done
    total = sum(entry["size"] for _, entry, _ in todo)
    with tqdm(total=total, desc="downloading", unit="B", unit_scale=True, unit_divisor=1024) as bar:
        for name, entry, target in todo:
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".part")
            bar.update(part.stat().st_size if part.exists() else 0)
            bar.set_postfix_str(f"{name}/{entry['to']}")
            fetch(file_url(config.mirror, manifest[name], entry), target, entry, bar, config)
            report[name]["downloaded"] = report[name].get("downloaded", 0) + 1
    for name, counts in report.items():
        print(
            f"{name}: {counts['files']} files at {counts['repo']}@{counts['commit'][:7]} in {out / name} "
            f"({counts.get('downloaded', 0)} downloaded, {counts['already_there']} already there)"
        )
    return report


def copy_sources(config: DownloadConfig, manifest: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`--from DIR`: copy DIR/<source>/ as it is; files the manifest pins are checked, and the others counted."""
    origin, out = Path(config.from_dir), Path(config.out)
    report: dict[str, Any] = {}
    for name in config.sources:
        folder = origin / name
        if not folder.is_dir():
            raise UserError(f"--from: no {name}/ folder in {origin}")
        pinned = {entry["to"]: entry for entry in manifest[name]["files"]}
        files = sorted(path for path in folder.rglob("*") if path.is_file())
        counts = {"files": len(files), "pinned_checksum_ok": 0, "not_pinned_or_other_version": 0}
        for path in tqdm(files, desc=f"copying {name}", unit=" files"):
            relative = path.relative_to(folder).as_posix()
            target = out / name / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".part")
            shutil.copyfile(path, part)
            entry = pinned.get(relative)
            if entry and sha256(part) == entry["sha256"]:
                counts["pinned_checksum_ok"] += 1
            else:
                counts["not_pinned_or_other_version"] += 1
            part.rename(target)
        report[name] = counts
        print(
            f"{name}: copied {counts['files']} files to {out / name} ({counts['pinned_checksum_ok']} match the "
            f"pinned checksums, {counts['not_pinned_or_other_version']} are not pinned or another version)"
        )
    return report


def main(argv: list[str] | None = None) -> None:
    run_cli(DownloadConfig, download, argv, prog="just download")


if __name__ == "__main__":
    main()

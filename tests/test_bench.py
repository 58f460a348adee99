"""The benchmark suite's plumbing: `scripts/bench.py` (list, run by name), `benchlib.write_result` and the docs hook
that turns result files into the Benchmarks page's table. The benchmarks themselves are not run here."""

from __future__ import annotations

import argparse
import ast
import fcntl
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
HOOK = ROOT / "docs" / "hooks" / "bench_results.py"
ECHO = '''"""Echo: its arguments as its figures."""

import argparse
import sys

from benchlib import write_result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int)
    args = parser.parse_args()
    write_result("echo", {"n": args.n}, args, summary={"n": args.n})
    print("torch loaded:", "torch" in sys.modules)
'''


@pytest.fixture
def benchlib(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import benchlib

    return benchlib


def load_hook():
    pytest.importorskip("mkdocs")
    spec = importlib.util.spec_from_file_location("bench_results_hook", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench(*args: str, script: Path = SCRIPTS / "bench.py") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)


def test_list_shows_every_benchmark_with_its_docstring_line():
    listed = bench("--list")
    assert listed.returncode == 0, listed.stderr
    shown = dict(line.split(None, 1) for line in listed.stdout.splitlines())
    expected = {}
    for path in SCRIPTS.glob("bench_*.py"):
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        expected[path.stem.removeprefix("bench_")] = docstring.splitlines()[0]
    assert shown == expected
    assert all(shown.values())
    assert "pin_sources" not in shown and "opencc" not in shown  # a maintainer tool; an experiment


def test_runs_a_benchmark_by_name_with_its_arguments(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for name in ("bench.py", "benchlib.py"):
        shutil.copy(SCRIPTS / name, scripts / name)
    (scripts / "bench_echo.py").write_text(ECHO, encoding="utf-8")

    run = bench("echo", "--n", "3", script=scripts / "bench.py")
    assert run.returncode == 0, run.stderr
    assert "torch loaded: False" in run.stdout  # recording versions imports nothing
    result = json.loads((tmp_path / "benchmarks" / "results" / "echo.json").read_text(encoding="utf-8"))
    assert result["figures"] == {"n": 3} and result["args"] == {"n": 3} and result["summary"] == {"n": 3}
    assert result["command"].endswith("bench.py echo --n 3")

    unknown = bench("nope", script=scripts / "bench.py")
    assert unknown.returncode == 2
    assert "no benchmark 'nope'" in unknown.stderr and "known: echo" in unknown.stderr


def test_write_result_records_how_and_where_the_figures_were_measured(benchlib, tmp_path):
    args = argparse.Namespace(rows=2, out=Path("out/x.json"))
    path = benchlib.write_result("rows-fast", {"us_per_row": 0.42}, args, summary={"µs/row": 0.42}, folder=tmp_path)
    assert path == tmp_path / "rows-fast.json"
    result = json.loads(path.read_text(encoding="utf-8"))

    assert result["name"] == "rows-fast"
    assert result["command"].startswith("python ")
    date = datetime.fromisoformat(result["date"])
    assert date.utcoffset().total_seconds() == 0 and abs((datetime.now(timezone.utc) - date).total_seconds()) < 60
    assert result["versions"]["python"] == platform.python_version()
    assert "torch" in result["versions"]  # installed here: read from its metadata
    assert result["machine"]["cpus"] == os.cpu_count()
    assert result["machine"]["memory_gib"] > 0
    for moment in ("before", "after"):
        assert len(result["load_average"][moment]) == 3
    assert set(result["heavy_lock"]) == {"file", "held_by_this_run", "held_by_others"}
    assert result["args"] == {"rows": 2, "out": "out/x.json"}
    assert result["summary"] == {"µs/row": 0.42}
    assert result["figures"] == {"us_per_row": 0.42}
    assert not list(tmp_path.glob("*.partial"))

    with pytest.raises(ValueError, match="Rows Fast"):
        benchlib.write_result("Rows Fast", {}, folder=tmp_path)
    with pytest.raises(TypeError, match="summary\\['runs'\\]"):
        benchlib.write_result("rows", {}, summary={"runs": [1, 2]}, folder=tmp_path)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="reads Linux's /proc/locks")
def test_heavy_lock_tells_this_run_from_another(benchlib, tmp_path):
    lock = tmp_path / "heavy.lock"
    lock.touch()
    assert benchlib.heavy_lock(lock) == {"file": str(lock), "held_by_this_run": False, "held_by_others": []}

    with open(lock, "w") as handle:  # held by this process, and so by a child it starts (a `flock` wrapper)
        fcntl.flock(handle, fcntl.LOCK_EX)
        assert benchlib.heavy_lock(lock)["held_by_this_run"]
        child = f"import sys; sys.path.insert(0, {str(SCRIPTS)!r}); import benchlib, pathlib; " + (
            f"print(benchlib.heavy_lock(pathlib.Path({str(lock)!r}))['held_by_this_run'])"
        )
        assert subprocess.run([sys.executable, "-c", child], capture_output=True, text=True).stdout.strip() == "True"

    holder = (
        "import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); print(1, flush=True); "
    )
    other = subprocess.Popen([sys.executable, "-c", holder + "time.sleep(60)", str(lock)], stdout=subprocess.PIPE)
    try:
        other.stdout.readline()
        assert benchlib.heavy_lock(lock) == {
            "file": str(lock),
            "held_by_this_run": False,
            "held_by_others": [other.pid],
        }
    finally:
        other.kill()
        other.wait()


def test_docs_table_renders_the_result_files(benchlib, tmp_path, monkeypatch):
    hook = load_hook()
    benchlib.write_result("search", {}, summary={"recall@10": 0.92163, "corpus": 1679103, "HNSW build s": 469.2},
                          folder=tmp_path)  # fmt: skip
    benchlib.write_result("cold_start", {}, summary={"after / before": 0.929, "note": "a | b"}, folder=tmp_path)

    table = hook.results_table(tmp_path)
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [row.split(" | ")[0] for row in rows] == ["| `cold_start`", "| `search`"]  # by name
    assert "recall@10: **0.9216**<br>corpus: **1,679,103**<br>HNSW build s: **469**" in rows[1]
    assert "note: **a \\| b**" in rows[0]  # a | in a cell does not split it
    assert f"{os.cpu_count()} × " in rows[0] and " → " in rows[0]
    assert table.count("  `python ") == 2  # each result's command under the table

    monkeypatch.setattr(hook, "RESULTS", tmp_path)
    page = hook.on_page_markdown("# Benchmarks\n\n<!-- bench-results -->\n\nafter\n")
    assert page.startswith("# Benchmarks\n\n| benchmark |") and page.endswith("\n\nafter\n")
    assert hook.on_page_markdown("no marker") == "no marker"

    (tmp_path / "broken.json").write_text('{"name": "broken"}', encoding="utf-8")
    with pytest.raises(hook.PluginError, match=r"broken\.json: no field 'command'"):
        hook.results_table(tmp_path)
    (tmp_path / "broken.json").write_text(json.dumps(json.loads((tmp_path / "search.json").read_text())))
    with pytest.raises(hook.PluginError, match="field 'name' is 'search', not the file's name 'broken'"):
        hook.results_table(tmp_path)


def test_the_committed_result_files_render():
    hook = load_hook()
    table = hook.results_table()
    for path in (ROOT / "benchmarks" / "results").glob("*.json"):
        assert f"| `{path.stem}` |" in table

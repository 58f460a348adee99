"""Load test of `just serve` on 127.0.0.1: concurrent clients, a fixed number of requests, latency and errors.

    flock /tmp/st_poetry_heavy.lock python scripts/bench_serve.py --model models/e5-small-zh-poetry \\
        --data data/processed --sample 20000 --screenshot docs/serve.png

1. Index: `--index DIR` is used as it is when it holds an index; otherwise `just index` builds one there from
   `--data`/corpus.jsonl, or from a sample of it (`--sample N` lines, 0 = all): the groups of the page's example
   descriptions' lines, then of other eval lines (so load queries can find their line), then the rest, in a
   seeded order; always whole groups.
2. Server: `st-poetry serve` in a child process on 127.0.0.1 and a free port, with `--serve-args` (e.g.
   "--batch-window-ms 0 --max-batch 16"); waits for /health.
3. Load: `--clients` threads, each on its own keep-alive connection, send `--requests` GET /api/search?q=...&k=10
   in total, the queries being the eval descriptions of `--data`/eval.jsonl whose line is in the index, in a
   seeded order. Reported: latency p50/p95/p99, requests per second, non-200 answers (a 503 when too many
   requests wait) and failed connections (errors), the server's CPU seconds, and how often the description's own
   line came back first or in the top 10 (a check that answers are right).
   The run stops by itself: every request has a timeout and the whole load a deadline.
4. Bad input: the cases of issue 15 against the real server, each must be a 4xx, then /health must answer.
5. `--screenshot PNG`: Chromium's own headless screenshot of the page for an example description (the server
   renders the results, so no script has to run), at desktop width, and `PNG` with `-phone` at 390 px.
6. `--memory-workers N [N ...]`: instead of 3-5, memory of `serve --workers N` for each N, after --requests
   searches: per process (the supervisor and each worker) RSS, USS (pages only it holds), PSS (shared pages
   divided among their processes) and its file-backed resident pages, from psutil; the server's sum of PSS
   counts the memory-mapped index once however many workers map it; and that sum by mapping (each index file,
   libraries, anonymous memory), from /proc/PID/smaps.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote, urlencode

import numpy as np
from benchlib import ROOT, write_result

from st_poetry.core.schema import CORPUS, read_split
from st_poetry.retrieval.lines import LINES_FILE, Lines
from st_poetry.retrieval.search import INDEX_INFO
from st_poetry.serve.app import EXAMPLES


def sample_corpus(data: Path, sample: int, seed: int, out: Path) -> int:
    """Write whole groups of data/corpus.jsonl to `out`: eval lines' groups first, then other ones, each in a
    seeded random order, until `sample` lines."""
    rows = CORPUS.read(data / "corpus.jsonl")
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"] or row["text"], []).append(row)
    by_text = {row["text"]: row["group"] or row["text"] for row in rows}
    evaluation = read_split(data / "eval.jsonl").rows
    examples = list(dict.fromkeys(by_text[row["positive"]] for row in evaluation if row["anchor"] in EXAMPLES))
    wanted = [group for group in dict.fromkeys(by_text[row["positive"]] for row in evaluation) if group not in examples]
    others = [group for group in groups if group not in {*wanted, *examples}]
    random.Random(seed).shuffle(wanted)
    random.Random(seed).shuffle(others)
    chosen, size = set(), 0
    for group in [*examples, *wanted, *others]:
        if size >= sample:
            break
        chosen.add(group)
        size += len(groups[group])
    CORPUS.write(out, (row for row in rows if (row["group"] or row["text"]) in chosen))  # corpus order
    return size


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 30) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_for_health(port: int, server: subprocess.Popen, log: Path, limit: float = 600) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited ({server.returncode}); see {log}")
        try:
            if request(port, "GET", "/health", timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server did not answer /health within {limit:.0f}s; see {log}")


def load(port: int, queries: list[dict], clients: int, total: int, k: int, deadline_s: float) -> dict:
    """`total` GET /api/search requests from `clients` threads; latencies of the answered ones, errors, ranks."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    first = top = 0
    counter = iter(range(total))
    lock = threading.Lock()
    stop_at = time.monotonic() + deadline_s

    def client() -> None:
        nonlocal first, top
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop_at:
            with lock:
                number = next(counter, None)
            if number is None:
                break
            row = queries[number % len(queries)]
            path = "/api/search?" + urlencode({"q": row["anchor"], "k": k})
            tick = time.perf_counter()
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                status = response.status
            except OSError as error:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                status, body = type(error).__name__, b""
            elapsed = time.perf_counter() - tick
            with lock:
                if status != 200:
                    errors[str(status)] = errors.get(str(status), 0) + 1
                    continue
                latencies.append(elapsed)
                lines = [hit["text"] for hit in json.loads(body)["results"]]
                first += bool(lines) and lines[0] == row["positive"]
                top += row["positive"] in lines
        connection.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    answered = len(latencies)
    p50, p95, p99 = (np.percentile(latencies, [50, 95, 99]) * 1000).round(1) if answered else (None,) * 3
    return {
        "requests": answered + sum(errors.values()),
        "answered": answered,
        "errors": errors,
        "wall_s": round(wall, 1),
        "requests_per_s": round(answered / wall, 2),
        "latency_ms": {"p50": p50, "p95": p95, "p99": p99, "max": round(max(latencies, default=0) * 1000, 1)},
        "line_first": round(first / max(answered, 1), 4),
        f"line_in_top_{k}": round(top / max(answered, 1), 4),
    }


BAD_INPUT = [  # (name, method, path, body)
    ("empty query", "GET", "/api/search?q=", None),
    ("10,000-character query (GET)", "GET", "/api/search?q=" + quote("雪" * 10_000), None),
    ("10,000-character query (POST)", "POST", "/api/search", json.dumps({"queries": ["雪" * 10_000]}).encode()),
    ("k=0", "GET", "/api/search?q=" + quote("秋雨") + "&k=0", None),
    ("k=10^6", "GET", "/api/search?q=" + quote("秋雨") + "&k=1000000", None),
    ("non-UTF-8 query string", "GET", "/api/search?q=%FF%FE%E9%9B", None),
    ("non-UTF-8 body", "POST", "/api/search", b'{"queries": ["\xe9\x9b"]}'),
]


def bad_input(port: int) -> list[dict]:
    """Each case's status and message; the run fails if one is not a 4xx or the server stops answering."""
    results = []
    for name, method, path, body in BAD_INPUT:
        status, text = request(port, method, path, body)
        try:
            detail = json.loads(text)["detail"]
        except (ValueError, KeyError, TypeError):
            detail = text.decode("utf-8", "replace").strip()
        results.append({"case": name, "status": status, "detail": detail})
        print(f"  {name}: {status} {detail[:100]}")
        if not 400 <= status < 500:
            raise SystemExit(f"bad input {name!r} got {status}, not a 4xx")
    if request(port, "GET", "/health")[0] != 200:
        raise SystemExit("the server stopped answering /health after the bad input")
    return results


def screenshot(port: int, out: Path, query: str) -> list[str]:
    """The page for `query` at desktop and phone width, through Chromium's own headless mode."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("  no chromium: no screenshot (apt-get install -y chromium)")
        return []
    url = f"http://127.0.0.1:{port}/?" + urlencode({"q": query})
    written = []
    for path, size in ((out, "1000,1250"), (out.with_name(f"{out.stem}-phone{out.suffix}"), "390,844")):
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        command += [f"--window-size={size}", f"--screenshot={path.resolve()}", url]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
        written.append(str(path))
    return written


def worker_memory(args: argparse.Namespace, workers: int, queries: list[dict], work: Path) -> dict:
    """Memory (MB) of each process of `serve --workers N` and their sums, after `--requests` searches."""
    import psutil

    port, log = free_port(), work / f"serve-{workers}.log"
    with open(log, "w", encoding="utf-8") as handle:
        command = [sys.executable, "-m", "st_poetry", "serve", "--index", str(args.index), "--port", str(port)]
        command += ["--workers", str(workers), *shlex.split(args.serve_args)]
        server = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    try:
        wait_for_health(port, server, log)
        parent = psutil.Process(server.pid)
        deadline = time.monotonic() + 300  # /health answers once the first worker is up: wait for the others
        while workers > 1 and len(parent.children()) < workers and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(20 if workers > 1 else 0)
        for row in queries[: args.requests]:
            request(port, "GET", "/api/search?" + urlencode({"q": row["anchor"], "k": args.k}))
        processes = [parent, *parent.children(recursive=True)]
        pss = pss_by_mapping(processes, args.index.resolve())
        rows = []
        for process in processes:
            memory = process.memory_full_info()
            row = {key: round(getattr(memory, key) / 2**20, 1) for key in ("rss", "uss", "pss", "shared")}
            rows.append({"pid": process.pid, "cmd": " ".join(process.cmdline()[1:4]), **row})
    finally:
        server.terminate()
        server.wait(60)
    total = {key: round(sum(row[key] for row in rows), 1) for key in ("rss", "uss", "pss", "shared")}
    print(f"--workers {workers}: {len(rows)} processes, sum {total}")
    for row in rows:
        print(f"  {row}")
    print(f"  sum of PSS by mapping (MB): {pss}")
    return {"processes": rows, "sum": total, "pss_by_mapping": pss}


def pss_by_mapping(processes: list, index: Path) -> dict[str, float]:
    """The processes' PSS (MB) summed by what is mapped: each file of the index folder (shared by the workers that
    map it, so counted once), shared libraries, other files, and anonymous memory (heap, arenas: private)."""
    totals: dict[str, float] = {}
    for process in processes:
        for mapping in process.memory_maps(grouped=True):
            path = Path(mapping.path)
            if path.is_relative_to(index):
                kind = f"index: {path.relative_to(index).parts[0]}"
            elif ".so" in path.suffixes or path.name.endswith(".so"):
                kind = "libraries"
            elif mapping.path.startswith("/"):
                kind = "other files"
            else:
                kind = "anonymous"
            totals[kind] = totals.get(kind, 0.0) + mapping.pss / 2**20
    return {kind: round(mb, 1) for kind, mb in sorted(totals.items(), key=lambda item: -item[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/e5-small-zh-poetry", help="model for the index")
    parser.add_argument("--data", type=Path, default=Path("data/processed"), help="folder with corpus and eval.jsonl")
    parser.add_argument("--index", type=Path, default=Path(".bench/serve/index"), help="index folder (built if absent)")
    parser.add_argument("--sample", type=int, default=20_000, help="index about this many corpus lines (0 = all)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--deadline", type=float, default=600, help="seconds after which the load stops regardless")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--serve-args", default="", help="more `st-poetry serve` options, as one string")
    parser.add_argument("--screenshot", type=Path, help="write the page's screenshot here (and a -phone one)")
    parser.add_argument("--memory-workers", type=int, nargs="+", help="measure memory of these --workers instead")
    parser.add_argument("--out", type=Path, default=Path(".bench/bench_serve.json"))
    parser.add_argument("--result", help="result name (default: serve, or serve-memory with --memory-workers)")
    args = parser.parse_args()
    work = args.out.parent
    work.mkdir(parents=True, exist_ok=True)

    if not (args.index / INDEX_INFO).is_file():
        corpus = args.data / "corpus.jsonl"
        if args.sample:
            corpus = work / "serve_corpus.jsonl"
            print(f"sampled {sample_corpus(args.data, args.sample, args.seed, corpus):,} lines into {corpus}")
        command = [sys.executable, "-m", "st_poetry", "index", "--model", args.model]
        subprocess.run([*command, "--corpus", str(corpus), "--out", str(args.index)], cwd=ROOT, check=True)
    info = json.loads((args.index / INDEX_INFO).read_text(encoding="utf-8"))

    indexed = set(Lines(args.index / LINES_FILE).column("text").to_pylist())
    queries = [row for row in read_split(args.data / "eval.jsonl").rows if row["positive"] in indexed]
    random.Random(args.seed).shuffle(queries)
    print(f"{len(queries):,} eval descriptions whose line is in the index")
    if args.memory_workers:
        report = {"index": {"folder": str(args.index), "lines": info["size"], "type": info["index_type"]}}
        report["files_mb"] = {p.name: round(p.stat().st_size / 2**20, 1) for p in args.index.iterdir() if p.is_file()}
        report["workers"] = {n: worker_memory(args, n, queries, work) for n in args.memory_workers}
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        summary = {f"{n} workers, sum of PSS MB": row["sum"]["pss"] for n, row in report["workers"].items()}
        write_result(args.result or "serve-memory", report, args, summary=summary)
        return
    port, log = free_port(), work / "serve.log"
    with open(log, "w", encoding="utf-8") as handle:
        command = [sys.executable, "-m", "st_poetry", "serve", "--index", str(args.index), "--port", str(port)]
        command += shlex.split(args.serve_args)
        server = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    try:
        tick = time.perf_counter()
        wait_for_health(port, server, log)
        startup = time.perf_counter() - tick
        print(f"server up in {startup:.1f}s: {info['size']:,} lines, model {info['model']}")
        request(port, "GET", "/api/search?" + urlencode({"q": EXAMPLES[0]}))  # warm-up, not timed
        cpu_before = cpu_seconds(server.pid)
        result = load(port, queries, args.clients, args.requests, args.k, args.deadline)
        result["server_cpu_s"] = round(cpu_seconds(server.pid) - cpu_before, 1)
        print(json.dumps(result, indent=2))
        print("bad input:")
        bad = bad_input(port)
        shots = screenshot(port, args.screenshot, EXAMPLES[1]) if args.screenshot else []
    finally:
        server.terminate()
        server.wait(30)

    with open("/proc/loadavg") as handle:
        loadavg = handle.read().split()[:3]
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average before the end {' '.join(loadavg)}",
        "model": info["model"],
        "index": {"folder": str(args.index), "lines": info["size"], "type": info["index_type"]},
        "clients": args.clients,
        "serve_args": args.serve_args,
        "k": args.k,
        "startup_s": round(startup, 1),
        "load": result,
        "bad_input": bad,
        "screenshots": shots,
    }
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    latency = report["load"]["latency_ms"]
    summary = {"p50 ms": latency["p50"], "p95 ms": latency["p95"], "requests/s": report["load"]["requests_per_s"]}
    write_result(
        args.result or "serve", report, args, summary=summary | {"errors": sum(report["load"]["errors"].values())}
    )


if __name__ == "__main__":
    main()

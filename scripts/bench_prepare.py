"""Time and peak memory of `prepare` on a synthetic works file of a million records, and on the real data.

    flock /tmp/st_poetry_heavy.lock python scripts/bench_prepare.py                    # 1,000,000 records
    python scripts/bench_prepare.py --records 100000 --sample data/raw           # smaller, plus the sample
    flock /tmp/st_poetry_heavy.lock python scripts/bench_prepare.py --records 0 --full data/raw --opencc
                                # works + CCPM + all of chinese-poetry, and OpenCC's throughput on its text

The synthetic file is shaped like chinese-poetry-and-prose `works*.json` (all twelve fields, pretty-printed like
the real files): mostly 诗 with a line-by-line translation, 4-line poems most often (real mean 4.5 lines, here 4.9;
14 characters a line, translation lines 34), a tail of long poems, some translations whose line count differs,
and some 文/赋 records the Kind filter drops. Each `prepare` runs in a fresh child process; its peak resident
memory is the child's maxrss.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from benchlib import run_measured, write_result

KINDS = ["诗"] * 80 + ["词"] * 12 + ["曲"] * 2 + ["文"] * 4 + ["赋"] * 2
LINE_COUNTS = [2] * 20 + [4] * 62 + [8] * 12 + [12] * 3 + [16] * 2 + [40]  # mean 4.9 lines
# the 3,500 most common characters are roughly the first part of the CJK block; a shuffled pool of them
# cut at random places gives distinct lines of realistic length without the cost of drawing every character
POOL_SIZE = 20_000_000


def synthetic_works(path: Path, records: int, seed: int) -> None:
    rng = random.Random(seed)
    pool = "".join(rng.choices([chr(c) for c in range(0x4E00, 0x4E00 + 3500)], k=POOL_SIZE))

    def text(length: int) -> str:
        start = rng.randrange(POOL_SIZE - length)
        return pool[start : start + length]

    def poem_line() -> str:
        half = rng.choice((5, 7))
        return f"{text(half)}，{text(half)}。"

    with open(path, "w", encoding="utf-8") as handle:
        handle.write("[\n")
        for index in range(records):
            n = rng.choice(LINE_COUNTS)
            lines = [poem_line() for _ in range(n)]
            roll = rng.random()
            if roll < 0.7:  # translated line by line
                translation = [text(rng.randint(20, 48)) + "。" for _ in range(n)]
            elif roll < 0.75:  # translated, but merged lines: counts differ
                translation = [text(rng.randint(40, 90)) + "。" for _ in range(max(1, n // 2))]
            else:
                translation = []
            annotated = rng.random() < 0.1
            record = {
                "Id": 10_000 + index,
                "Title": text(rng.randint(2, 10)),
                "Dynasty": "唐",
                "Author": text(rng.randint(2, 3)),
                "AuthorId": rng.randrange(50_000),
                "Kind": rng.choice(KINDS),
                "Content": "\r\n".join(lines),
                "Translation": "\r\n".join(translation),
                "Comment": "",
                "Intro": text(rng.randint(60, 200)) if annotated else "",
                "Annotation": "\r\n".join(f"{text(2)}：{text(20)}" for _ in range(6)) if annotated else "",
                "PostsCount": rng.randrange(10),
            }
            body = json.dumps(record, ensure_ascii=False, indent=2)
            handle.write("  " + body.replace("\n", "\n  ") + (",\n" if index < records - 1 else "\n"))
        handle.write("]\n")


def run_prepare(args: list[str], log: Path) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (GiB) of one `st-poetry prepare` child process."""
    cost = run_measured([sys.executable, "-m", "st_poetry", "prepare", *args], log)
    print(log.read_text(encoding="utf-8"))
    return cost["seconds"], cost["cpu_seconds"], cost["peak_rss_mib"] / 1024


def opencc_throughput(raw: Path) -> None:
    """Characters per second of OpenCC t2s (what `--poems` uses) on every paragraph of chinese-poetry's 全唐诗,
    one call per poem as prepare makes them, and one call for all of it."""
    import opencc

    texts = []
    for path in sorted((raw / "chinese-poetry" / "quantangshi").glob("poet.*.json")):
        texts += ["\n".join(poem.get("paragraphs") or []) for poem in json.loads(path.read_text(encoding="utf-8"))]
    converter, chars = opencc.OpenCC("t2s"), sum(map(len, texts))
    start = time.process_time()
    for text in texts:
        converter.convert(text)
    per_poem = time.process_time() - start
    start = time.process_time()
    converter.convert("\n".join(texts))
    whole = time.process_time() - start
    print(f"OpenCC {opencc.__version__} t2s on 全唐诗 ({len(texts):,} poems, {chars / 1e6:.1f} M chars), CPU time:")
    print(f"  one call per poem: {per_poem:.1f} s = {chars / per_poem / 1e6:.2f} M chars/s")
    print(f"  one call for all:  {whole:.1f} s = {chars / whole / 1e6:.2f} M chars/s")


def raw_inputs(raw: Path, poems: bool) -> list[str]:
    """What a plain `just prepare` reads from a RAW_DATA folder (without chinese-poetry unless `poems`)."""
    inputs = ["--works", str(raw / "chinese-poetry-and-prose"), "--ccpm", str(raw / "ccpm" / "train.jsonl")]
    return inputs + (["--poems", str(raw / "chinese-poetry")] if poems else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="records in the synthetic works file")
    parser.add_argument("--workdir", default=".bench/prepare", help="where the synthetic file and outputs go")
    parser.add_argument("--sample", default=None, help="raw data folder (works files + ccpm/train.jsonl) to time too")
    parser.add_argument(
        "--full", default=None, help="raw data folder: time works + CCPM train + all of chinese-poetry (--poems)"
    )
    parser.add_argument("--opencc", action="store_true", help="measure OpenCC's throughput on --full's 全唐诗")
    parser.add_argument("--repeats", type=int, default=1, help="runs per input; the fastest is reported")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    synthetic = workdir / f"works_synthetic_{args.records}_{args.seed}.json"
    if args.records and not synthetic.exists():
        start = time.perf_counter()
        partial = synthetic.with_suffix(".partial")
        synthetic_works(partial, args.records, args.seed)
        partial.rename(synthetic)
        print(f"wrote {synthetic} ({synthetic.stat().st_size / 2**20:,.0f} MiB) in {time.perf_counter() - start:.0f} s")

    cases = {f"synthetic works, {args.records:,} records": ["--works", str(synthetic)]} if args.records else {}
    if args.sample:
        cases["shared sample (works + CCPM train)"] = raw_inputs(Path(args.sample), poems=False)
    if args.full:
        raw = Path(args.full)
        cases["works + CCPM train + chinese-poetry"] = raw_inputs(raw, poems=True)
        if args.opencc:
            opencc_throughput(raw)
    results = []
    for name, inputs in cases.items():
        runs = [
            run_prepare([*inputs, "--out", str(workdir / "out")], workdir / "prepare.log") for _ in range(args.repeats)
        ]
        results.append((name, *min(runs)))
    print("| input | wall time | CPU time | peak memory |\n| --- | ---: | ---: | ---: |")
    for name, seconds, cpu, peak in results:
        print(f"| {name} | {seconds:.1f} s | {cpu:.1f} s | {peak:.2f} GiB |")
    write_result(
        "prepare",
        {"inputs": [dict(zip(("input", "seconds", "cpu_seconds", "peak_gib"), row, strict=True)) for row in results]},
        args,
        summary={f"{name}: s": seconds for name, seconds, *_ in results}
        | {f"{name}: peak GiB": round(peak, 2) for name, *_, peak in results},
    )


if __name__ == "__main__":
    main()

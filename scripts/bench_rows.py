"""Per-row cost of writing prepared rows: the schema's declared writer against prepare's fast writer.

    python scripts/bench_rows.py                 # 200,000 pair rows and 200,000 corpus rows, best of 3

`schema.PAIR.line` / `CORPUS.line` encode a row as a dict (json.dumps); prepare assembles the same bytes from the
pieces the schema declares, with the fields a record's rows share encoded once per record. This is why prepare
keeps its own writer (docs/BENCHMARKS.md#prepare); the tests check that both write the same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
import timeit

from benchlib import write_result

from st_poetry.core.schema import CORPUS, PAIR
from st_poetry.data.prepare import corpus_row, corpus_row_end, pair_row, pair_row_end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    alphabet = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    texts = [("".join(rng.choices(alphabet, k=14)), "".join(rng.choices(alphabet, k=7))) for _ in range(args.rows)]
    negatives, meta, group = ("甲乙丙丁戊", "己庚辛壬癸"), ("静夜思", "李白", "唐"), "works唐.json:1"
    pair_end, corpus_end = pair_row_end(negatives, "works", group), corpus_row_end(meta, group)
    shared_pair = {"negatives": list(negatives), "source": "works", "group": group}
    shared_corpus = dict(zip(("title", "author", "dynasty"), meta, strict=True)) | {"group": group}

    def declared() -> None:
        for anchor, positive in texts:
            PAIR.line({"anchor": anchor, "positive": positive, **shared_pair})
        for index, (text, _) in enumerate(texts):
            CORPUS.line({"id": f"c{index}", "text": text, **shared_corpus})

    def fast() -> None:
        for anchor, positive in texts:
            pair_row(anchor, positive, pair_end)
        for index, (text, _) in enumerate(texts):
            corpus_row(index, text, corpus_end)

    rows = 2 * args.rows
    runs = {"declared": declared, "fast": fast}
    seconds = {name: min(timeit.repeat(run, number=1, repeat=3)) for name, run in runs.items()}
    result = {f"{name}_us_per_row": round(value / rows * 1e6, 3) for name, value in seconds.items()}
    result["speedup"] = round(seconds["declared"] / seconds["fast"], 1)
    print(json.dumps(result))
    write_result("rows", result, args, summary=result)


if __name__ == "__main__":
    main()

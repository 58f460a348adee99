"""The eval pairs two prepared folders both hold out: a fair eval split for models trained on different splits.

    python scripts/experiments/held_out_by_both.py A/processed B/processed OUT
    st-poetry evaluate --data OUT --model BASE MODEL_A MODEL_B --max-corpus 20000

Adding chinese-poetry to `just prepare` links most pairs to a poem, which changes the groups and so the grouped
train/eval split: a model trained without it has seen most of the pipeline's eval pairs, and the other way round.
OUT gets the eval rows of A (same order) that are in B's eval and in neither train split, and A's corpus.jsonl.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from st_poetry.core.schema import PAIR


def pairs(path: Path) -> set[tuple[str, str]]:
    return {(row["anchor"], row["positive"]) for row in PAIR.read(path)}


def main() -> None:
    first, second, out = map(Path, sys.argv[1:4])
    trained = pairs(first / "train.jsonl") | pairs(second / "train.jsonl")
    held_out = pairs(second / "eval.jsonl") - trained
    rows = [row for row in PAIR.read(first / "eval.jsonl") if (row["anchor"], row["positive"]) in held_out]
    out.mkdir(parents=True, exist_ok=True)
    PAIR.write(out / "eval.jsonl", rows)
    shutil.copyfile(first / "corpus.jsonl", out / "corpus.jsonl")
    print(f"{len(rows):,} eval pairs held out by both -> {out}")


if __name__ == "__main__":
    main()

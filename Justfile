# st_poetry: every command a user runs, each an alias of `st-poetry COMMAND`; extra arguments pass through
# (`just train --help` lists every training option).

set positional-arguments

python := env("PYTHON", "python")
# The torch release the lock pins; TORCH_WHEELS is where its CPU build is found while locking (a page or folder of wheels)
torch := "2.13.0"
torch_wheels := env("TORCH_WHEELS", "https://download.pytorch.org/whl/cpu/torch/")
# Where the raw data lives (`just download` puts it there); override with RAW_DATA=... just prepare
raw := env("RAW_DATA", "data/raw")

# list the recipes
default:
    @just --list

# the public raw data at pinned versions -> data/raw, the CPU preset's base model -> models/e5-small-zh (`--from DIR`: offline)
download *args:
    {{python}} -m st_poetry download "$@"

# raw poetry data -> data/processed (train/eval pairs, corpus, stats)
# (no arguments: the works files, CCPM train and the chinese-poetry collection under RAW_DATA)
prepare *args:
    if [ "$#" -eq 0 ]; then set -- --works "{{raw}}/chinese-poetry-and-prose" --ccpm "{{raw}}/ccpm/train.jsonl" \
        --poems "{{raw}}/chinese-poetry"; fi; \
    {{python}} -m st_poetry prepare "$@"

# data/processed -> data/mined (hard negatives)
mine *args:
    {{python}} -m st_poetry mine "$@"

# data/mined -> models/st-poetry (fine-tuned model, checkpoints, curves)
train *args:
    {{python}} -m st_poetry train "$@"

# a model folder -> onnx/ and openvino/ files in it, fp32 and int8, for `--backend` in every stage
export *args:
    {{python}} -m st_poetry export "$@"

# data/mined -> models/st-poetry-reranker (a cross-encoder that reranks retrieved lines)
train-reranker *args:
    {{python}} -m st_poetry train-reranker "$@"

# models side by side on the eval split, CCPM and BM25
evaluate *args:
    {{python}} -m st_poetry evaluate "$@"

# encode the corpus into a searchable faiss index
index *args:
    {{python}} -m st_poetry index "$@"

# find the poem lines for a description
search *args:
    {{python}} -m st_poetry search "$@"

# the search page and JSON API at http://127.0.0.1:8000 (--index DIR --host --port)
serve *args:
    {{python}} -m st_poetry serve "$@"

# the whole job, download -> ... -> index -> a demo query, from one TOML file (default: the CPU preset)
pipeline *args:
    case " $* " in *" --config "*|*" --config="*) ;; *) set -- --config configs/cpu-e5-small.toml "$@";; esac; \
    {{python}} -m st_poetry pipeline "$@"

# the benchmarks: `just bench --list`, `just bench NAME [ARGS]` (scripts/bench_NAME.py) -> benchmarks/results/NAME.json
bench *args:
    {{python}} scripts/bench.py "$@"

# the default (fast) test suite
test *args:
    {{python}} -m pytest "$@"

# every test, the slow training runs included
test-all *args:
    {{python}} -m pytest -m "" "$@"

# re-resolve requirements.lock (CPython 3.11, Linux x86-64) from pyproject.toml's ranges, install it, run the tests
lock *args:
    #!/usr/bin/env bash
    set -euo pipefail
    override=$(mktemp); trap 'rm -f "$override"' EXIT
    echo "torch=={{torch}}+cpu" > "$override"   # resolve against the CPU build: no CUDA libraries in the lock
    uv pip compile pyproject.toml --extra dev --extra onnx --extra openvino --extra docs \
        --python-version 3.11 --upgrade --find-links "{{torch_wheels}}" --override "$override" \
        --custom-compile-command "just lock" --quiet -o requirements.lock "$@"
    sed -i -e 's/^torch=={{torch}}+cpu$/torch=={{torch}}/' -e '/--override /d' requirements.lock  # either build satisfies the pin
    {{python}} -m pip install --quiet -r requirements.lock -e .
    just test

# the documentation site at http://127.0.0.1:8001 (beside `just serve`'s 8000), rebuilt on every change
docs *args:
    mkdocs serve --dev-addr 127.0.0.1:8001 "$@"

# build the documentation site once, every warning an error (as CI does) -> site/
docs-build *args:
    mkdocs build --strict "$@"

# ruff lint and format check, and the layer contracts (pyproject.toml's [tool.importlinter])
lint:
    ruff check .
    ruff format --check .
    lint-imports

# st_poetry: every command a user runs. Extra arguments pass through to the module (`just train --help`).

set positional-arguments

python := env("PYTHON", "python")
# Where the raw data lives (`just download` puts it there); override with RAW_DATA=... just prepare
raw := env("RAW_DATA", "data/raw")

# list the recipes
default:
    @just --list

# the public raw data at pinned versions -> data/raw, the CPU preset's base model -> models/e5-small-zh (`--from DIR`: offline)
download *args:
    {{python}} -m st_poetry.download "$@"

# raw poetry data -> data/processed (train/eval pairs, corpus, stats)
# (no arguments: the works files, CCPM train and the chinese-poetry collection under RAW_DATA)
prepare *args:
    if [ "$#" -eq 0 ]; then set -- --works "{{raw}}/chinese-poetry-and-prose" --ccpm "{{raw}}/ccpm/train.jsonl" \
        --poems "{{raw}}/chinese-poetry"; fi; \
    {{python}} -m st_poetry.prepare "$@"

# data/processed -> data/mined (hard negatives)
mine *args:
    {{python}} -m st_poetry.mine "$@"

# data/mined -> models/st-poetry (fine-tuned model, checkpoints, curves)
train *args:
    {{python}} -m st_poetry.train "$@"

# a model folder -> onnx/ and openvino/ files in it, fp32 and int8, for `--backend` in every stage
export *args:
    {{python}} -m st_poetry.export "$@"

# data/mined -> models/st-poetry-reranker (a cross-encoder that reranks retrieved lines)
train-reranker *args:
    {{python}} -m st_poetry.rerank "$@"

# models side by side on the eval split, CCPM and BM25
evaluate *args:
    {{python}} -m st_poetry.evaluate "$@"

# encode the corpus into a searchable faiss index
index *args:
    {{python}} -m st_poetry.search build "$@"

# find the poem lines for a description
search *args:
    {{python}} -m st_poetry.search query "$@"

# the search page and JSON API at http://127.0.0.1:8000 (--index DIR --host --port)
serve *args:
    {{python}} -m st_poetry.serve "$@"

# prepare -> mine -> train -> evaluate -> index from one TOML file (--config configs/cpu-e5-small.toml)
pipeline *args:
    {{python}} -m st_poetry.pipeline "$@"

# the default (fast) test suite
test *args:
    {{python}} -m pytest "$@"

# every test, the slow training runs included
test-all *args:
    {{python}} -m pytest -m "" "$@"

# ruff lint and format check
lint:
    ruff check .
    ruff format --check .

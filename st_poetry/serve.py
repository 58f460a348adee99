"""The search page and JSON API: the model and index are loaded once, then every request is one encode and a scan.

    python -m st_poetry.serve --index indexes/poetry --port 8000

- `GET /api/search?q=...&k=10` and `POST /api/search` with `{"queries": [...], "k": 10}`: the objects
  `just search --json` prints, each hit with its whole poem (`poem`) when the corpus holds the hit's group;
- `GET /?q=...`: the page. Results are rendered on the server, so it works with JavaScript off; the script only
  spares the reload, and a poem unfolds with a plain <details> element;
- `GET /health`; `GET /api/info`: the index's index.json.

Bad input (empty, too long, non-UTF-8, k out of range) is a 4xx with a one-line `detail`; nothing a client sends
stops the server.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from pydantic import BaseModel

from st_poetry.config import ServeConfig, run_cli
from st_poetry.search import PoetryIndex

WEB = Path(__file__).parent / "web"
# What the page offers to click: the first is the README's example (the poem is not in the shared corpus, but
# lines on autumn rain are); the others are held-out eval descriptions of lines in the shared corpus.
EXAMPLES = (
    "山中下雨后傍晚的秋天",
    "洛阳城显得多么的寂寞，昔日的宫室全都被烧焚。",
    "她在花间徘徊看那款款飞舞的蝴蝶，听取枝头黄莺的歌唱。",
    "早晨的雾色弥漫于山谷，战马在怒号的北风中嘶叫。",
)


class SearchRequest(BaseModel):
    """POST /api/search: several descriptions at once."""

    queries: list[str]
    k: int | None = None


class Searcher:
    """The index with its poems, one model call at a time, and the limits every request is checked against.

    The lock: a fast tokenizer refuses concurrent use from several threads ("Already borrowed"), and on a few
    CPU cores parallel encodes would only compete for the same cores.
    """

    def __init__(self, index: PoetryIndex, config: ServeConfig) -> None:
        self.index, self.config = index, config
        self.lock = threading.Lock()
        # Rows of a group in corpus order: a poem's lines. CCPM and FlagEmbedding groups are records of choices,
        # not poems; they carry no title, which is how a poem is told apart.
        self.groups: dict[str, list[int]] = defaultdict(list)
        for row, (group, title) in enumerate(zip(index.lines["group"], index.lines["title"], strict=True)):
            if group and title:
                self.groups[group].append(row)

    def check(self, queries: Sequence[str], k: int | None) -> tuple[list[str], int]:
        """Stripped queries and k, or an HTTP 400 saying what is wrong."""
        limits = self.config
        k = limits.top_k if k is None else k
        if not 1 <= k <= limits.max_k:
            raise HTTPException(400, f"k must be between 1 and {limits.max_k}, got {k}")
        if not queries:
            raise HTTPException(400, "no query: send at least one description")
        if len(queries) > limits.max_queries:
            raise HTTPException(400, f"{len(queries)} queries in one request; the limit is {limits.max_queries}")
        stripped = [query.strip() for query in queries]
        for number, query in enumerate(stripped, start=1):
            where = f"query {number}" if len(stripped) > 1 else "the query"
            if not query:
                raise HTTPException(400, f'{where} is empty: describe what you are looking for, e.g. "{EXAMPLES[0]}"')
            if len(query) > limits.max_query_chars:
                raise HTTPException(
                    400, f"{where} has {len(query):,} characters; the limit is {limits.max_query_chars:,}"
                )
        return stripped, k

    def search(self, queries: Sequence[str], k: int | None = None) -> list[dict[str, Any]]:
        """`just search --json`'s objects for valid queries, every hit with its poem (None when unknown)."""
        queries, k = self.check(queries, k)
        with self.lock:
            found = self.index.search(queries, k)
        hits = [hit for hits in found for hit in hits]
        rows = sorted({row for hit in hits for row in self.groups.get(hit["group"], ())})
        texts = dict(zip(rows, self.index.lines[rows]["text"], strict=True)) if rows else {}
        for hit in hits:
            lines = [texts[row] for row in self.groups.get(hit["group"], ())]
            poem = {key: hit[key] for key in ("title", "author", "dynasty", "group")}
            # a corpus line is unique, so its text is its position in the poem
            hit["poem"] = {**poem, "lines": lines, "hit": lines.index(hit["text"])} if lines else None
        return [{"query": query, "results": hits} for query, hits in zip(queries, found, strict=True)]


def highlight(text: str, query: str) -> Markup:
    """The text with every letter or character that also occurs in the query marked (punctuation never is)."""
    shared = {char for char in query if char.isalnum()}
    return Markup("").join(Markup("<mark>%s</mark>") % c if c in shared else escape(c) for c in text)


def _one_line(error: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one line: 'k: Input should be a valid integer ...'."""
    parts = []
    for item in error.errors():
        if item.get("type") == "model_attributes_type" and tuple(item.get("loc", ())) == ("body",):
            return 'send a JSON object such as {"queries": ["..."], "k": 10} with Content-Type: application/json'

        where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("query", "body"))
        parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
    return "; ".join(parts) or "invalid request"


def create_app(index: PoetryIndex, config: ServeConfig) -> FastAPI:
    """The web application around an opened index; `serve` runs it with uvicorn, the tests with TestClient."""
    searcher = Searcher(index, config)
    templates = Jinja2Templates(directory=WEB)
    templates.env.filters["highlight"] = highlight
    # FastAPI's /docs and /redoc pages load their scripts from a CDN: off, so nothing here reaches outside.
    app = FastAPI(
        title="st_poetry", summary="poem lines for modern-Chinese descriptions", docs_url=None, redoc_url=None
    )
    app.mount("/static", StaticFiles(directory=WEB / "static"), name="static")
    footer = {"model": config.model or index.info["model"], "index": str(index.folder), "info": index.info}

    @app.middleware("http")
    async def utf8_only(request: Request, call_next: Any) -> Any:
        """Starlette turns undecodable query bytes into U+FFFD silently, FastAPI a non-UTF-8 body into a vague
        "error parsing the body": name the problem instead."""
        for part, raw in (("query string", request.scope["query_string"]), ("body", await request.body())):
            try:
                (unquote_to_bytes(raw.replace(b"+", b" ")) if part == "query string" else raw).decode("utf-8")
            except UnicodeDecodeError as error:
                return JSONResponse({"detail": f"the {part} is not UTF-8 (byte {error.start})"}, status_code=400)
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(error)}, status_code=422)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "lines": index.index.ntotal}

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return index.info

    @app.get("/api/search")
    def search_get(q: str, k: int | None = None) -> dict[str, Any]:
        return searcher.search([q], k)[0]

    @app.post("/api/search")
    def search_post(body: SearchRequest) -> dict[str, Any]:
        return {"queries": searcher.search(body.queries, body.k)}

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request, q: str = "", k: int | None = None) -> HTMLResponse:
        context: dict[str, Any] = {"q": q, "k": k or config.top_k, "examples": EXAMPLES, **footer}
        status = 200
        if q.strip():
            try:
                context["result"] = searcher.search([q], k)[0]
            except HTTPException as error:
                context["error"], status = error.detail, error.status_code
        return templates.TemplateResponse(request, "page.html", context, status_code=status)

    return app


def serve(config: ServeConfig) -> None:
    """Load the index and model, then serve until interrupted."""
    import uvicorn

    index = PoetryIndex(config.index, model=config.model, ef_search=config.ef_search)
    app = create_app(index, config)
    print(f"serving {index.info['size']:,} lines of {config.index} at http://{config.host}:{config.port}/")
    uvicorn.run(app, host=config.host, port=config.port, log_level="info")


def main(argv: Sequence[str] | None = None) -> None:
    run_cli(ServeConfig, serve, argv, prog="python -m st_poetry.serve")


if __name__ == "__main__":
    main()

"""The search page and JSON API: the model and index are loaded once, then requests are encoded and searched.

    st-poetry serve --index indexes/poetry --port 8000

- `GET /api/search?q=...&k=10` and `POST /api/search` with `{"queries": [...], "k": 10}`: the objects
  `just search --json` prints, each hit with its whole poem (`poem`) when the corpus holds the hit's group;
- `GET /?q=...`: the page. Results are rendered on the server, so it works with JavaScript off; the script only
  spares the reload, and a poem unfolds with a plain <details> element;
- `GET /health`; `GET /api/info`: the index's index.json, models and files by name, without the server's paths.

Searches are micro-batched (`Batcher`): one thread owns the model and answers the requests waiting for it
together, in one encode and one faiss call; when --max-waiting requests wait, the next is a 503.

Bad input (empty, too long, non-UTF-8, k out of range) is a 4xx with a one-line `detail`; nothing a client sends
stops the server. Every response carries SECURITY_HEADERS; a Host header the server is not known by is a 400 (a
DNS-rebinding page reaches 127.0.0.1 under its own name) and a body over --max-body-bytes a 413.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import threading
import time
import typing
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, fields
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, HTTPException, Request
from fastapi import Query as QueryParameters
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from pydantic import Field, create_model
from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from st_poetry.core.config import FusionOptions, ServeConfig
from st_poetry.core.errors import UserError
from st_poetry.core.log import get_logger
from st_poetry.retrieval.search import PoetryIndex
from st_poetry.retrieval.service import EXAMPLE_QUERY, SearchOptions, SearchService, fusion_options, query_problem
from st_poetry.serve.poems import Poems
from st_poetry.serve.run import CONFIG_ENV, LOOPBACK_NAMES, trusted_hosts, uvicorn_options

if TYPE_CHECKING:  # a reranker is loaded only when asked for: without one, an exported model's server loads no torch
    from sentence_transformers import CrossEncoder

__all__ = ["CONFIG_ENV", "LOOPBACK_NAMES", "trusted_hosts", "uvicorn_options"]  # where the tests import them from

logger = get_logger(__name__)

WEB = Path(__file__).parent / "web"
# What the page offers to click: the first is the README's example (the poem is not in the shared corpus, but
# lines on autumn rain are); the others are held-out eval descriptions of lines in the shared corpus.
EXAMPLES = (
    EXAMPLE_QUERY,
    "洛阳城显得多么的寂寞，昔日的宫室全都被烧焚。",
    "她在花间徘徊看那款款飞舞的蝴蝶，听取枝头黄莺的歌唱。",
    "早晨的雾色弥漫于山谷，战马在怒号的北风中嘶叫。",
)

# On every response, errors included. The page is one HTML file, a stylesheet and a script, all from this server:
# nothing inline, nothing from elsewhere, never inside another site's frame.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _optional_fields(options: type) -> dict[str, Any]:
    """An options dataclass's fields as request fields, each None (the server's setting) unless the request sets it."""
    hints = typing.get_type_hints(options)
    return {f.name: (hints[f.name] | None, Field(None, description=f.metadata["help"])) for f in fields(options)}


# What a request may choose, each None for the server's setting: k, rerank, and the search options of `just search`
# (hybrid, fusion, alpha, ...), which carry over by themselves as FusionOptions grows.
Options = create_model(
    "Options",
    k=(int | None, Field(None, description="lines per query")),
    rerank=(bool | None, Field(None, description="rerank the retrieved lines (default: when the server has one)")),
    **_optional_fields(FusionOptions),
)


class Query(Options):
    """GET /api/search and the page: one description."""

    q: str


class Queries(Options):
    """POST /api/search: several descriptions at once."""

    queries: list[str]


class Busy(Exception):
    """Too many requests are waiting for the model: the next one is a 503."""


@dataclass
class Job:
    """A request waiting for the model: what to do, how many queries it holds, where its answer goes."""

    payload: Any
    size: int
    future: Future
    arrived: float


class Batcher:
    """The model's single consumer: requests wait in a bounded queue, and one thread answers them in batches.

    A fast tokenizer refuses concurrent use ("Already borrowed") and on a few CPU cores parallel encodes would
    only compete, so one thread calls the model; a batch of queries costs it far less than the same queries one
    by one. While several clients keep the server busy (the last batch held more than one request), the first
    waiting request waits at most `window` seconds from its arrival (one that already waited while the model was
    busy goes at once) for others to join, up to `max_batch` queries; a lone client's request waits for nobody. A
    request is never split. When `max_waiting` requests wait, `submit` raises Busy. `handle` gets the batch's
    payloads and returns their answers in order; when it fails, the batch's requests are answered one at a time, so
    an error is only its own request's.
    """

    def __init__(
        self, handle: Callable[[list[Any]], list[Any]], window: float, max_batch: int, max_waiting: int
    ) -> None:
        self.handle, self.window, self.max_batch = handle, window, max_batch
        self.jobs: queue.Queue[Job | None] = queue.Queue(max_waiting)
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self.thread.start()

    def submit(self, payload: Any, size: int = 1) -> Future:
        """Queue a request; its future resolves to its answer (or raises its error). Never blocks."""
        if self.closed:
            raise Busy("the server is shutting down")
        future: Future = Future()
        try:
            self.jobs.put_nowait(Job(payload, size, future, time.monotonic()))
        except queue.Full:
            raise Busy(f"{self.jobs.maxsize} requests are waiting for the model") from None
        return future

    def close(self, timeout: float = 30) -> None:
        """Answer what is being answered, refuse the rest, stop the thread."""
        self.closed = True
        with contextlib.suppress(queue.Full):  # when full, the thread sees `closed` after its batch
            self.jobs.put_nowait(None)
        self.thread.join(timeout)

    def _run(self) -> None:
        carried: Job | None = None
        window = 0.0  # no company to wait for until a batch holds more than one request
        while not self.closed or carried is not None:
            first = carried if carried is not None else self.jobs.get()
            carried = None
            if first is None:
                break
            batch, size = [first], first.size
            while size < self.max_batch:
                try:
                    job = self.jobs.get(timeout=max(0.0, first.arrived + window - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self.closed = True
                    break
                if size + job.size > self.max_batch:
                    carried = job
                    break
                batch.append(job)
                size += job.size
            window = self.window if len(batch) > 1 else 0.0
            self._answer([job for job in batch if job.future.set_running_or_notify_cancel()])
        leftover = [carried] if carried is not None else []
        while True:
            try:
                leftover.append(self.jobs.get_nowait())
            except queue.Empty:
                break
        for job in leftover:
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(Busy("the server is shutting down"))

    def _answer(self, batch: list[Job]) -> None:
        if not batch:
            return
        try:
            answers = self.handle([job.payload for job in batch])
        except Exception as error:
            if len(batch) == 1:
                batch[0].future.set_exception(error)
            else:
                for job in batch:
                    self._answer([job])
            return
        for job, answer in zip(batch, answers, strict=True):
            job.future.set_result(answer)


class Searcher:
    """The retrieval service behind the batcher, the poems of its hits, and the limits every request is checked
    against."""

    def __init__(self, index: PoetryIndex, config: ServeConfig, reranker: CrossEncoder | None = None) -> None:
        self.index, self.config, self.reranker = index, config, reranker
        self.service = SearchService(index, reranker, config.rerank_top_k)
        self.fusion_fields = [f.name for f in fields(FusionOptions)]
        self.poems = Poems(index.lines)
        self.batcher = Batcher(self.answer, config.batch_window_ms / 1000, config.max_batch, config.max_waiting)

    def check(self, queries: Sequence[str], options: Options) -> tuple[list[str], SearchOptions]:
        """Stripped queries and what the service is to do with them, or an HTTP 400 saying what is wrong."""
        limits = self.config
        k = limits.top_k if options.k is None else options.k
        rerank = self.reranker is not None if options.rerank is None else options.rerank
        if rerank and self.reranker is None:
            raise HTTPException(400, "this server has no reranker (start it with --reranker PATH): leave out rerank")
        chosen = {name: getattr(options, name) for name in self.fusion_fields if getattr(options, name) is not None}
        try:
            fusion = FusionOptions(**vars(fusion_options(limits)) | chosen)
        except ValueError as error:
            raise HTTPException(400, str(error)) from None
        if not 1 <= k <= limits.max_k:
            raise HTTPException(400, f"k must be between 1 and {limits.max_k}, got {k}")
        if fusion.depth > limits.max_depth:
            raise HTTPException(400, f"depth must be between 1 and {limits.max_depth}, got {fusion.depth}")
        if not queries:
            raise HTTPException(400, "no query: send at least one description")
        if len(queries) > limits.max_queries:
            raise HTTPException(400, f"{len(queries)} queries in one request; the limit is {limits.max_queries}")
        stripped = [query.strip() for query in queries]
        for number, query in enumerate(stripped, start=1):
            where = f"query {number}" if len(stripped) > 1 else "the query"
            if problem := query_problem(query):
                raise HTTPException(400, f'{where} {problem}: describe what you are looking for, e.g. "{EXAMPLES[0]}"')
            if len(query) > limits.max_query_chars:
                raise HTTPException(
                    400, f"{where} has {len(query):,} characters; the limit is {limits.max_query_chars:,}"
                )
        return stripped, SearchOptions(k, fusion, rerank)

    async def search(self, queries: Sequence[str], options: Options) -> list[dict[str, Any]]:
        """`just search --json`'s objects for valid queries, every hit with its poem (None when unknown), answered
        by the batcher; the event loop only waits, so /health and the checks answer while the model works."""
        queries, chosen = self.check(queries, options)
        try:
            found = await asyncio.wrap_future(self.batcher.submit((queries, chosen), len(queries)))
        except Busy as error:
            detail = f"the server is busy ({error}): retry in a moment"
            raise HTTPException(503, detail, headers={"Retry-After": "1"}) from None
        except UserError as error:  # a hybrid search on an index without BM25
            raise HTTPException(400, str(error)) from None
        return [{"query": query, "results": hits} for query, hits in zip(queries, found, strict=True)]

    def answer(self, requests: list[tuple[list[str], SearchOptions]]) -> list[list[list[dict[str, Any]]]]:
        """The batcher's handler: every request's queries in one service call, the hits' poems in one read."""
        found = self.service.search(
            [query for queries, _ in requests for query in queries],
            [options for queries, options in requests for _ in queries],
        )
        self.add_poems([hit for hits in found for hit in hits])
        answers, start = [], 0
        for queries, _ in requests:
            answers.append(found[start : start + len(queries)])
            start += len(queries)
        return answers

    def add_poems(self, hits: list[dict[str, Any]]) -> None:
        """Each hit's "poem": its group's whole lines, the hit's line marked, or None for a group without a title."""
        poem_rows = self.poems.rows_of([hit["group"] for hit in hits])
        rows = sorted({row for found in poem_rows for row in found})
        texts = dict(zip(rows, self.index.lines.rows(rows)["text"], strict=True))
        for hit, found in zip(hits, poem_rows, strict=True):
            lines = whole_lines([texts[row] for row in found])
            poem = {key: hit[key] for key in ("title", "author", "dynasty", "group")}
            position = next((number for number, line in enumerate(lines) if hit["text"] in line), None)
            hit["poem"] = {**poem, "lines": lines, "hit": position} if lines else None


def whole_lines(lines: list[str]) -> list[str]:
    """A group's lines without those that are part of another of its lines: a CCPM choice linked to its poem
    (空山新雨后 of 空山新雨后，天气晚来秋。) belongs to the poem's group, but the poem shows the whole line, marked."""
    return [line for line in lines if not any(line != other and line in other for other in lines)]


def highlight(text: str, query: str) -> Markup:
    """The text with the letters and characters that also occur in the query marked (punctuation never is), a run
    of them in one <mark>."""
    shared = {char for char in query if char.isalnum()}
    runs = ("".join(chars) for _, chars in groupby(text, key=shared.__contains__))  # marked and unmarked in turn
    return Markup("").join(Markup("<mark>%s</mark>") % run if run[0] in shared else escape(run) for run in runs)


def _one_line(error: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one line: 'k: Input should be a valid integer ...'."""
    parts = []
    for item in error.errors():
        if item.get("type") == "model_attributes_type" and tuple(item.get("loc", ())) == ("body",):
            return 'send a JSON object such as {"queries": ["..."], "k": 10} with Content-Type: application/json'

        where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("query", "body"))
        parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
    return "; ".join(parts) or "invalid request"


def public_name(name: str) -> str:
    """A model or file as a client sees it: a Hub id as given, a local path by its last part alone (where the
    server keeps its files is nobody else's business)."""
    path = Path(name).expanduser()
    local = path.is_absolute() or path.exists() or name.startswith(".") or name.count("/") > 1 or "\\" in name
    return path.name if local else name


def public_info(info: dict[str, Any]) -> dict[str, Any]:
    """index.json with its model and corpus by name (`public_name`)."""
    names = {key: public_name(str(info[key])) for key in ("model", "corpus") if info.get(key)}
    return info | names


class BodyLimit:
    """A 413 for a body over `limit` bytes, said by its Content-Length or counted as it streams in (chunked), before
    anything parses it; a body within the limit is passed on whole."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = JSONResponse({"detail": f"the request body is over {self.limit:,} bytes"}, status_code=413)
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            await too_large(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> Message:
            nonlocal body
            if body is None:
                return await receive()
            message, body = body, None
            return message

        await self.app(scope, replay, send)


class SecureHeaders:
    """SECURITY_HEADERS added to every response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                message = {**message, "headers": headers + [h for h in self.headers if h[0] not in present]}
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


class App(FastAPI):
    """FastAPI with SecureHeaders outside all of its middleware, so that a 500 carries them too."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecureHeaders(super().build_middleware_stack())


def create_app(index: PoetryIndex, config: ServeConfig, reranker: CrossEncoder | None = None) -> FastAPI:
    """The web application around an opened index; `serve` runs it with uvicorn, the tests with TestClient."""
    searcher = Searcher(index, config, reranker)
    templates = Jinja2Templates(directory=WEB)
    templates.env.filters["highlight"] = highlight

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        searcher.batcher.close()

    # FastAPI's /docs and /redoc pages load their scripts from a CDN: off, so nothing here reaches outside.
    app = App(
        title="st_poetry",
        summary="poem lines for modern-Chinese descriptions",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.searcher = searcher
    app.mount("/static", StaticFiles(directory=WEB / "static"), name="static")
    shown_info = public_info(index.info)
    footer = {
        "model": public_name(config.model or index.info["model"]),
        "index": index.folder.name,
        "info": shown_info,
        "reranker": public_name(config.reranker) if reranker and config.reranker else None,
        "hybrid": f"{config.fusion}, alpha {config.alpha}" if config.hybrid else None,
        "rerank_top_k": config.rerank_top_k,
    }

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

    # added last, so outside utf8_only: the host is checked first, then the body's size, before anything reads it
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=trusted_hosts(config), www_redirect=False)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(error)}, status_code=422)

    # Every route is async: none waits for a worker thread, so /health answers however many searches wait.
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "lines": index.index.ntotal}

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        return shown_info

    @app.get("/api/search")
    async def search_get(query: Annotated[Query, QueryParameters()]) -> dict[str, Any]:
        return (await searcher.search([query.q], query))[0]

    @app.post("/api/search")
    async def search_post(body: Queries) -> dict[str, Any]:
        return {"queries": await searcher.search(body.queries, body)}

    @app.get("/", response_class=HTMLResponse)
    async def page(request: Request, options: Annotated[Options, QueryParameters()], q: str = "") -> HTMLResponse:
        # the request's own options stay on the form, the example links and the JSON link
        chosen = {name: str(value).lower() if isinstance(value, bool) else value for name, value in options}
        chosen = {name: value for name, value in chosen.items() if value is not None}
        context: dict[str, Any] = {"q": q, "options": chosen, "examples": EXAMPLES, **footer}
        status = 200
        if q.strip():
            try:
                context["result"] = (await searcher.search([q], options))[0]
            except HTTPException as error:
                context["error"], status = error.detail, error.status_code
        return templates.TemplateResponse(request, "page.html", context, status_code=status)

    return app


def load_app(config: ServeConfig) -> FastAPI:
    """Open the index (memory-mapped), load the model and reranker, and build the application."""
    index = PoetryIndex(config.index, model=config.model, ef_search=config.ef_search, backend=config.backend)
    reranker = None
    if config.reranker:
        from st_poetry.core.modeling import load_reranker  # torch

        reranker = load_reranker(config.reranker)
    return create_app(index, config, reranker)


def app_from_env() -> FastAPI:
    """uvicorn's app factory in each worker process of `serve --workers N`: the ServeConfig that `serve` left
    in CONFIG_ENV as JSON. Every worker loads its own model and maps the same index file, which the OS keeps
    once in its page cache for all of them; nothing else is shared, so any worker can answer any request."""
    return load_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])))

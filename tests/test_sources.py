"""Known sources (workflow/sources.py, rule download) against a local HTTP server (the standard
library's, on 127.0.0.1) serving archives built from the real-format fixtures: the happy path, a
wrong checksum, a truncated transfer, a 404, a mirror, and reruns. No test touches the internet."""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import re
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from workflow import sources

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "raw"


class Handler(http.server.SimpleHTTPRequestHandler):
    """Files of the served folder; under /truncated/ a response that promises more bytes than it sends."""

    def do_GET(self):
        if self.path.startswith("/truncated/"):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"PK\x03\x04 not all of it")
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, served folder): ml-1m.zip (the fixture's files under ml-1m/, as GroupLens ships
    them) and the Amazon 2014 fixture gzipped under its distributed names."""
    root = tmp_path_factory.mktemp("served")
    folder = root / "datasets" / "movielens"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "ml-1m.zip", "w") as archive:
        for name in ("ratings.dat", "movies.dat"):
            archive.write(FIXTURES / "movielens-1m" / name, f"ml-1m/{name}")
    amazon = root / "amazon"
    amazon.mkdir()
    for name in ("reviews_Video_Games_5.json", "meta_Video_Games.json"):
        (amazon / f"{name}.gz").write_bytes(gzip.compress((FIXTURES / "amazon-2014" / name).read_bytes(), mtime=0))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


def digest(path: Path, kind: str) -> str:
    return hashlib.new(kind, path.read_bytes()).hexdigest()


def spec(url: str, checksums: dict, fmt: str = "movielens-1m", **extra) -> dict:
    return {"source": "test", "format": fmt, "urls": [url], "checksums": checksums, **extra}


def test_a_source_is_fetched_checked_and_unpacked(server, tmp_path):
    base, root = server
    md5 = digest(root / "datasets/movielens/ml-1m.zip", "md5")
    out = sources.download(spec(f"{base}/datasets/movielens/ml-1m.zip", {"ml-1m.zip": f"md5:{md5}"}), tmp_path / "ml-1m")
    assert sorted(p.name for p in out.iterdir()) == ["SOURCE.json", "movies.dat", "ratings.dat"]
    assert (out / "ratings.dat").read_bytes() == (FIXTURES / "movielens-1m/ratings.dat").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["ml-1m"]  # no staging folder, no archive left


def test_a_checksum_mismatch_stops_with_the_url_and_both_sums(server, tmp_path):
    base, root = server
    url = f"{base}/datasets/movielens/ml-1m.zip"
    wrong = "0" * 32
    with pytest.raises(sources.DownloadError) as err:
        sources.download(spec(url, {"ml-1m.zip": f"md5:{wrong}"}), tmp_path / "ml-1m")
    assert str(err.value) == f"{url}: md5 mismatch: expected {wrong}, got {digest(root / 'datasets/movielens/ml-1m.zip', 'md5')}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path, message", [("/truncated/ml-1m.zip", r"truncated transfer|download failed after"),
                                           ("/datasets/movielens/missing.zip", r"HTTP 404")])
def test_a_failed_transfer_leaves_nothing(server, tmp_path, path, message):
    base, _ = server
    with pytest.raises(sources.DownloadError, match=rf"^{re.escape(base + path)}: ({message})"):
        sources.download(spec(base + path, {}), tmp_path / "ml-1m")
    assert list(tmp_path.iterdir()) == []


def test_the_format_files_must_be_in_the_archive(server, tmp_path):
    base, _ = server
    with pytest.raises(ValueError, match="has no file steam_reviews.json.gz"):
        sources.download(spec(f"{base}/datasets/movielens/ml-1m.zip", {}, fmt="steam"), tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_resolve_names_the_dataset_and_the_mistake():
    known = sources.registry()
    games = sources.resolve("games", {"source": "amazon-2014:Video_Games"}, known)
    assert games["folder"] == "amazon-2014-Video_Games" and games["category"] == "Video_Games"
    assert games["urls"][0].endswith("/reviews_Video_Games_5.json.gz")
    assert sources.resolve("m", {"source": "movielens-1m"}, known)["checksums"] == {
        "ml-1m.zip": "md5:c4d9eecfca2ab87c1945afe126590906"}
    for entry, message in [({"source": "netflix"}, "unknown source 'netflix'"),
                           ({"source": "amazon-2018"}, "needs a category"),
                           ({"source": "steam:Games"}, "takes no category"),
                           ({"source": "steam", "path": "/d"}, "either 'source' or 'path'"),
                           ({"source": "steam", "format": "lastfm"}, "is format steam, not lastfm")]:
        with pytest.raises(ValueError, match=f"dataset 'x': .*{re.escape(message)}"):
            sources.resolve("x", entry, known)


def test_the_mirror_replaces_scheme_and_host():
    url = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
    assert sources.mirrored(url, "http://127.0.0.1:8000/grouplens/") == "http://127.0.0.1:8000/grouplens/datasets/movielens/ml-1m.zip"
    assert sources.mirrored(url, None) == url


def snakemake(*args):
    return subprocess.run([str(Path(sys.executable).parent / "snakemake"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, env=os.environ.copy())


def test_the_workflow_downloads_through_the_mirror_and_a_rerun_does_nothing(server, tmp_path):
    """Two sourced datasets from a registry whose URLs name another host, fetched through the
    `download.mirror` key from the local server; a stale staging folder of an interrupted download
    is not taken for complete; the rerun plans nothing."""
    base, root = server
    registry = tmp_path / "sources.yaml"
    registry.write_text(
        "ml:\n  format: movielens-1m\n  urls: [https://files.example.invalid/datasets/movielens/ml-1m.zip]\n"
        f"  checksums: {{ml-1m.zip: 'md5:{digest(root / 'datasets/movielens/ml-1m.zip', 'md5')}'}}\n"
        "amazon:\n  format: amazon-2014\n  category: true\n"
        "  urls:\n    - https://files.example.invalid/amazon/reviews_{category}_5.json.gz\n"
        "    - https://files.example.invalid/amazon/meta_{category}.json.gz\n"
        f"  checksums: {{reviews_Video_Games_5.json.gz: 'sha256:{digest(root / 'amazon/reviews_Video_Games_5.json.gz', 'sha256')}'}}\n")
    results = tmp_path / "results"
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("datasets:\n  movies: {source: ml, domain: movie}\n  games: {source: 'amazon:Video_Games', domain: game}\n"
                       f"download: {{mirror: '{base}', registry: '{registry}'}}\n")
    (results / "downloads" / ".ml.partial").mkdir(parents=True)
    (results / "downloads" / ".ml.partial" / "ratings.dat").write_text("half a file")
    targets = [results / f"{d}/data/interactions.parquet" for d in ("movies", "games")]
    run = snakemake("--cores", 1, "--configfile", overlay, "--replace-workflow-config", "--config", f"results={results}",
                    "--", *targets)
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(p.name for p in (results / "downloads").iterdir()) == ["amazon-Video_Games", "ml"]
    log = (results / "logs/downloads/amazon-Video_Games.log").read_text()
    assert "meta_Video_Games.json.gz: no checksum pinned in the registry; its sha256 is" in log
    again = snakemake("-n", "--configfile", overlay, "--replace-workflow-config", "--config", f"results={results}",
                      "--", *targets)
    assert again.returncode == 0, again.stdout + again.stderr
    assert not re.findall(r"^rule \w+:$", again.stdout, flags=re.M), again.stdout

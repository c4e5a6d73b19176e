"""Known dataset sources: a dataset's `source:` -> its files downloaded, checked and unpacked.

    python -m workflow.sources --spec '{"source": "movielens-1m", "urls": [...], "checksums": {...},
        "format": "movielens-1m", "mirror": null, "proxy": null}' --out results/downloads/movielens-1m

The registry (config/sources.yaml, or `download.registry`) gives each source's format, URLs and
pinned checksums. A download is atomic: the files go into a hidden staging folder beside `--out`,
each is checked against its checksum (a mismatch stops with the URL and both sums), zips are
unpacked, the format's two files must be there, and only then is the folder renamed to `--out`; an
interrupted or failed download leaves no `--out`, so a rerun starts over.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

import yaml

from workflow import cli
from workflow.formats import IngestError, resolve_files

log = logging.getLogger("workflow.sources")

REGISTRY = Path(__file__).resolve().parent.parent / "config" / "sources.yaml"
CHUNK = 1 << 20


class DownloadError(ValueError):
    """A download that failed or does not match its pinned checksum; the message names the URL."""


def registry(path: str | Path | None = None) -> dict[str, Any]:
    """The known sources: name -> format, urls (`{category}` in them for the Amazon sources), checksums."""
    path = Path(path or REGISTRY)
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise IngestError(f"sources registry {path}: {exc}") from exc


def resolve(dataset: str, entry: dict[str, Any], known: dict[str, Any]) -> dict[str, Any]:
    """What a sourced dataset downloads: its folder name (`<name>` or `<name>-<category>`), format,
    category, URLs and checksums. Errors name the dataset and the key."""
    name, _, category = entry["source"].partition(":")
    if name not in known:
        raise IngestError(f"dataset '{dataset}': unknown source {name!r} (known: {', '.join(known)})")
    source = known[name]
    if "path" in entry:
        raise IngestError(f"dataset '{dataset}': give either 'source' or 'path', not both")
    if entry.get("format", source["format"]) != source["format"]:
        raise IngestError(f"dataset '{dataset}': source {name} is format {source['format']}, not {entry['format']}")
    category = category or entry.get("category") or ""
    if source.get("category") and not category:
        raise IngestError(f"dataset '{dataset}': source {name} needs a category ({name}:<category>, "
                          f"e.g. {name}:Video_Games)")
    if category and not source.get("category"):
        raise IngestError(f"dataset '{dataset}': source {name} takes no category")
    urls = [url.format(category=category) for url in source["urls"]]
    spec = {"source": name, "format": source["format"], "urls": urls,
            "checksums": {Path(urlsplit(u).path).name: source.get("checksums", {}).get(Path(urlsplit(u).path).name)
                          for u in urls}}
    if category:
        spec["category"] = category
    spec["folder"] = f"{name}-{category}" if category else name
    return spec


def mirrored(url: str, mirror: str | None) -> str:
    """The URL on the mirror: its scheme and host replaced by the mirror's base URL."""
    if not mirror:
        return url
    parts = urlsplit(url)
    return mirror.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def fetch(url: str, target: Path, proxy: str | None = None) -> dict[str, str]:
    """Download `url` to `target`; the md5 and sha256 of what arrived. A short transfer (fewer bytes
    than Content-Length) or an HTTP error raises DownloadError naming the URL."""
    handlers = [urllib.request.ProxyHandler({"http": proxy, "https": proxy})] if proxy else []
    digests = {"md5": hashlib.md5(), "sha256": hashlib.sha256()}
    received = 0
    try:
        with urllib.request.build_opener(*handlers).open(url, timeout=60) as response, open(target, "wb") as out:
            expected = response.headers.get("Content-Length")
            while chunk := response.read(CHUNK):
                out.write(chunk)
                received += len(chunk)
                for digest in digests.values():
                    digest.update(chunk)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:  # http.client.IncompleteRead is an OSError too
        raise DownloadError(f"{url}: download failed after {received} bytes ({exc})") from exc
    if expected is not None and received != int(expected):
        raise DownloadError(f"{url}: truncated transfer, {received} of {expected} bytes")
    return {kind: digest.hexdigest() for kind, digest in digests.items()}


def check(url: str, pinned: str | None, sums: dict[str, str]) -> None:
    """Stop on a checksum mismatch (the URL and both sums); warn when nothing is pinned."""
    if pinned is None:
        log.warning("%s: no checksum pinned in the registry; its sha256 is %s (pin it there)", url, sums["sha256"])
        return
    kind, _, expected = pinned.partition(":")
    if kind not in sums or not expected:
        raise DownloadError(f"{url}: registry checksum {pinned!r} is not md5:<hex> or sha256:<hex>")
    if sums[kind] != expected.lower():
        raise DownloadError(f"{url}: {kind} mismatch: expected {expected.lower()}, got {sums[kind]}")
    log.info("%s: %s %s as pinned", url, kind, sums[kind])


def unpack(path: Path, folder: Path) -> None:
    """A zip's members into `folder` (the archive removed); any other file stays as downloaded."""
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as archive:
        archive.extractall(folder)  # zipfile drops absolute and `..` parts of member names
    path.unlink()


def flatten(folder: Path) -> None:
    """An archive's one top-level folder (ml-1m/...) lifted into `folder`."""
    entries = [p for p in folder.iterdir() if p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir():
        inner = entries[0]
        for child in list(inner.iterdir()):
            child.rename(folder / child.name)
        inner.rmdir()


def download(spec: dict[str, Any], out: str | Path) -> Path:
    """Fetch, check and unpack a source's files into `out`, atomically (module docstring)."""
    out = Path(out)
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # an interrupted earlier attempt
    staging.mkdir(parents=True)
    try:
        manifest = []
        for url in spec["urls"]:
            name = Path(urlsplit(url).path).name
            source_url = mirrored(url, spec.get("mirror"))
            log.info("downloading %s", source_url)
            sums = fetch(source_url, staging / name, spec.get("proxy"))
            check(source_url, spec["checksums"].get(name), sums)
            manifest.append({"url": url, "file": name, **sums})
            unpack(staging / name, staging)
        flatten(staging)
        resolve_files({"name": spec["source"], "format": spec["format"], "path": str(staging),
                       "category": spec.get("category")})  # the format's two files are there
        (staging / "SOURCE.json").write_text(json.dumps({"source": spec["source"], "files": manifest}, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("source %s: %s", spec["source"], ", ".join(sorted(p.name for p in out.iterdir())))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.parser(__doc__.split("\n")[0])
    p.add_argument("--spec", type=cli.json_arg, required=True,
                   help="the source's URLs, checksums, format, mirror, proxy")
    p.add_argument("--out", required=True, help="folder that receives the unpacked files")
    return cli.run(lambda a: download(a.spec, a.out), p, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""Readers for the raw dataset formats (DESIGN.md section 4), one function per format.

Every reader streams its files as distributed (gzip detected by magic bytes, or plain) in blocks of
whole lines and returns two iterables of Arrow tables in the canonical column names: interaction
chunks (user_id, item_id, timestamp in seconds, rating) and item chunks (item_id, title cleaned,
categories). `workflow.ingest` concatenates, deduplicates, sorts and writes them.

A malformed line (undecodable bytes, not JSON / not a Python literal, a missing key, a wrong field
count, an unparseable timestamp) is reported with its file and line number; `BadLines` lets a run
skip up to `max_bad_lines` of them, counted in the log. A truncated gzip stream, an empty or missing
file always fails.
"""
from __future__ import annotations

import ast
import collections
import concurrent.futures
import datetime
import gzip
import html
import importlib.util
import json
import logging
import math
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

log = logging.getLogger("workflow.formats")

INTERACTIONS = pa.schema(
    [("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64()), ("rating", pa.float64())]
)
ITEMS = pa.schema([("item_id", pa.string()), ("title", pa.string()), ("categories", pa.list_(pa.string()))])

BLOCK_BYTES = 16 << 20  # decompressed bytes per block: bounds memory, amortises per-call overhead
CHUNK_ROWS = 100_000  # rows per Arrow chunk on the line-by-line path
GZIP_MAGIC = b"\x1f\x8b"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# u.item genre flag columns 6..24, in the order of ML-100K's u.genre.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)


class IngestError(ValueError):
    """Bad or missing raw input; the message names the dataset, file, line or key."""


class BadLines:
    """The run's budget of malformed lines: up to `limit` are skipped (logged, counted per file);
    the next one fails the run."""

    def __init__(self, limit: int = 0):
        self.limit = limit
        self.per_file: collections.Counter[str] = collections.Counter()

    @property
    def count(self) -> int:
        return sum(self.per_file.values())

    def skip(self, path: Path, lineno: int, reason: str) -> None:
        where = f"{path}, line {lineno}: {reason}"
        if self.count >= self.limit:
            extra = f" (more than max_bad_lines={self.limit} malformed lines)" if self.limit else ""
            raise IngestError(where + extra)
        self.per_file[str(path)] += 1
        if self.per_file[str(path)] <= 10:
            log.warning("skipped malformed line: %s", where)


# --- streaming ---------------------------------------------------------------------------------


def open_raw(path: Path):
    """A binary stream of the file's content, decompressed when it is gzip (by magic bytes)."""
    f = open(path, "rb")
    magic = f.read(2)
    f.seek(0)
    if magic == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=f, mode="rb")
    if path.name.endswith(".gz") and magic:
        f.close()
        raise IngestError(f"{path}: not a gzip file (the name ends in .gz but the content is not gzip)")
    return f


def _read(f, size: int) -> tuple[bytes, Exception | None]:
    """Up to `size` bytes, and the read error that stopped it early, if any: what was decompressed
    before a truncated gzip stream ends is kept, so the error can name the last complete line."""
    parts, total = [], 0
    try:
        while total < size:
            part = f.read1(size - total)
            if not part:
                break
            parts.append(part)
            total += len(part)
    except (EOFError, OSError, zlib.error) as exc:
        return b"".join(parts), exc
    return b"".join(parts), None


def read_blocks(path: Path, block_bytes: int | None = None) -> Iterator[tuple[int, bytes]]:
    """Yield (number of the block's first line, block of whole lines); never the whole file at once.
    The next block is read (decompressed) in a thread while the caller parses this one: zlib and
    Arrow's parser both release the GIL."""
    block_bytes = block_bytes or BLOCK_BYTES
    lineno, pending, seen = 1, b"", False
    with open_raw(path) as f, concurrent.futures.ThreadPoolExecutor(1) as reader:
        ahead = reader.submit(_read, f, block_bytes)
        while True:
            chunk, error = ahead.result()
            if not chunk and error is None:
                break
            if error is None:
                ahead = reader.submit(_read, f, block_bytes)
            seen = seen or bool(chunk)
            data = pending + chunk
            cut = data.rfind(b"\n") + 1
            block, pending = data[:cut], data[cut:]
            if block:
                yield lineno, block
                lineno += block.count(b"\n")
            if error is not None:
                what = "truncated or corrupt gzip stream" if isinstance(f, gzip.GzipFile) else "read error"
                raise IngestError(f"{path}: {what} after line {lineno - 1} ({error})")
    if not seen:
        raise IngestError(f"{path}: file is empty")
    if pending:
        yield lineno, pending


def block_lines(first: int, block: bytes) -> Iterator[tuple[int, bytes]]:
    lines = block.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return enumerate(lines, start=first)


def numbered_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    for first, block in read_blocks(path):
        yield from block_lines(first, block)


def first_line(path: Path, encoding: str = "utf-8") -> str:
    for _, raw in numbered_lines(path):
        try:
            return raw.decode(encoding).rstrip("\r")
        except UnicodeDecodeError as exc:
            raise IngestError(f"{path}, line 1: undecodable header ({encoding}): {exc.reason}") from exc
    raise IngestError(f"{path}: file is empty")


def rows_to_table(rows: list[tuple], schema: pa.Schema) -> pa.Table:
    columns = list(zip(*rows)) if rows else [[] for _ in schema]
    return pa.table([pa.array(col, type=field.type) for col, field in zip(columns, schema)], schema=schema)


def parse_rows(
    path: Path,
    parse_line: Callable[[str], tuple],
    schema: pa.Schema,
    budget: BadLines,
    *,
    encoding: str = "utf-8",
    skip_lines: int = 0,
    lines: Iterable[tuple[int, bytes]] | None = None,
) -> Iterator[pa.Table]:
    """Line by line: decode, `parse_line(text) -> row`, chunks of CHUNK_ROWS rows as Arrow tables.
    `parse_line` raises ValueError (or SyntaxError from ast) for a malformed line; blank lines are
    skipped."""
    rows: list[tuple] = []
    for lineno, raw in lines if lines is not None else numbered_lines(path):
        if lineno <= skip_lines:
            continue
        try:
            text = raw.decode(encoding).rstrip("\r")
        except UnicodeDecodeError as exc:
            budget.skip(path, lineno, f"undecodable bytes ({encoding}: {exc.reason} at byte {exc.start})")
            continue
        if not text.strip():
            continue
        try:
            rows.append(parse_line(text))
        except IngestError:
            raise
        except (ValueError, SyntaxError, RecursionError) as exc:
            budget.skip(path, lineno, str(exc) or type(exc).__name__)
            continue
        if len(rows) >= CHUNK_ROWS:
            yield rows_to_table(rows, schema)
            rows = []
    if rows:
        yield rows_to_table(rows, schema)


# --- field values ------------------------------------------------------------------------------


def split_fields(text: str, sep: str, n: int) -> list[str]:
    parts = text.split(sep)
    if len(parts) != n:
        raise ValueError(f"expected {n} fields separated by {sep!r}, got {len(parts)}")
    return parts


def identifier(text: str, what: str) -> str:
    text = text.strip()
    if not text:
        raise ValueError(f"empty {what}")
    return text


def seconds(text: str, per_second: int = 1) -> int:
    """An integer (or integral float, as RecBole writes `timestamp:float`) time stamp in seconds."""
    try:
        value = int(float(text) if any(c in text for c in ".eE") else int(text)) // per_second
    except (ValueError, OverflowError):
        raise ValueError(f"unparseable timestamp {text!r}") from None
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"unparseable timestamp {text!r} (out of range)")
    return value


def date_seconds(text: str) -> int:
    """'YYYY-MM-DD' -> seconds since the epoch at 00:00 UTC."""
    try:
        day = datetime.date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"unparseable timestamp (date) {text!r}, expected YYYY-MM-DD") from None
    return (day - datetime.date(1970, 1, 1)).days * 86400


def rating(text: str) -> float | None:
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"unparseable rating {text!r}") from None
    if not math.isfinite(value):  # float() takes 'nan' and 'inf'; a rating threshold would drop them silently
        raise ValueError(f"unparseable rating {text!r} (not a finite number)")
    return value


def clean_text(value: str | None) -> str | None:
    """HTML entities unescaped, whitespace collapsed and trimmed; None when nothing is left."""
    if value is None:
        return None
    value = " ".join(html.unescape(value).split())
    return value or None


def clean_list(values: Iterable[str | None]) -> list[str]:
    """Cleaned, non-empty, unique in order of first appearance."""
    cleaned = (clean_text(v) for v in values)
    return list(dict.fromkeys(v for v in cleaned if v))


def item_row(item_id: str | None, title: str | None, categories: Iterable[str | None]) -> tuple:
    return item_id, clean_text(title), clean_list(categories)


# --- records: JSON lines and Python-literal lines ----------------------------------------------


def coerce(value, type_: pa.DataType):
    """A JSON / Python value as `type_`, or ValueError. Integer ids become strings."""
    if value is None:
        return None
    if pa.types.is_string(type_):
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    elif pa.types.is_integer(type_):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= INT64_MAX:
            return value
    elif pa.types.is_floating(type_):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif pa.types.is_list(type_):
        if isinstance(value, (list, tuple)):
            return [coerce(v, type_.value_type) for v in value]
    raise ValueError(f"expected {type_}, got {value!r:.60}")


def pick(record, schema: pa.Schema, required: frozenset[str] = frozenset()) -> tuple:
    """The schema's keys from one record (a dict), coerced; a required key must be present and not null."""
    if not isinstance(record, dict):
        raise ValueError(f"expected an object, got {type(record).__name__}")
    values = []
    for field in schema:
        value = record.get(field.name)
        if field.name in required and (value is None or value == ""):
            raise ValueError(f"missing key '{field.name}'" if value is None else f"empty value for key '{field.name}'")
        try:
            values.append(coerce(value, field.type))
        except ValueError as exc:
            raise ValueError(f"key '{field.name}': {exc}") from None
    return tuple(values)


def json_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None


def literal_value(text: str):
    """A Python-literal line (Amazon 2014 metadata, Steam): ast.literal_eval, never eval."""
    try:
        return ast.literal_eval(text)
    except SyntaxError as exc:
        raise ValueError(f"not a Python literal ({exc.msg} at column {exc.offset})") from None
    except (ValueError, TypeError):
        raise ValueError("not a Python literal (it holds a name, a call or an operator)") from None
    except (MemoryError, RecursionError):
        raise ValueError("not a Python literal (nested too deeply)") from None


def _fast_json_block(block: bytes, schema: pa.Schema, required: frozenset[str]) -> pa.Table | None:
    """Arrow's multi-threaded JSON parser on a block; None when the block needs the line-by-line path
    (a parse error, a null required key, or a row count that differs from the line count)."""
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    n_lines = block.count(b"\n") + (not block.endswith(b"\n"))
    for block_size in (1 << 20, len(block) + 1):  # the second try: a line longer than Arrow's block
        try:
            table = pj.read_json(pa.BufferReader(block), read_options=pj.ReadOptions(block_size=block_size),
                                 parse_options=options)
            break
        except pa.ArrowInvalid as exc:
            if "straddl" not in str(exc):
                return None
        except UnicodeDecodeError:
            return None
    else:
        return None
    if table.num_rows != n_lines or not all(_present(table[name]) for name in required):
        return None
    return table.select(schema.names).cast(schema).combine_chunks()


def _present(column: pa.ChunkedArray) -> bool:
    """No null and, for strings, no empty value: what `pick` demands of a required key."""
    if column.null_count:
        return False
    return not (pa.types.is_string(column.type) and pc.any(pc.equal(column, "")).as_py())


def json_records(path: Path, schema: pa.Schema, required: Iterable[str], budget: BadLines) -> Iterator[pa.Table]:
    """JSON lines as tables of the schema's keys. Fast path: Arrow parses each block; a block it
    rejects is parsed line by line with `json.loads`, which finds the bad line and its number."""
    required = frozenset(required)

    def parse(text: str) -> tuple:
        return pick(json_value(text), schema, required)

    for first, block in read_blocks(path):
        table = _fast_json_block(block, schema, required)
        if table is not None:
            yield table
        else:
            yield from parse_rows(path, parse, schema, budget, lines=block_lines(first, block))


def literal_records(path: Path, parse: Callable[[dict], tuple], schema: pa.Schema, budget: BadLines):
    return parse_rows(path, lambda text: parse(literal_value(text)), schema, budget)


def rename(table: pa.Table, names: dict[str, str]) -> pa.Table:
    return table.select(list(names)).rename_columns(list(names.values()))


def to_items(table: pa.Table, id_key: str, categories: Callable[[dict], list]) -> pa.Table:
    """A chunk of metadata records (with a `title` key) as cleaned item rows."""
    rows = [item_row(r[id_key], r["title"], categories(r)) for r in table.to_pylist()]
    return rows_to_table(rows, ITEMS)


# --- formats -----------------------------------------------------------------------------------

Chunks = Iterable[pa.Table]


def _atomic_header(path: Path) -> dict[str, int]:
    """`field:type` header of a RecBole atomic file -> field name -> column index."""
    names = [f.split(":", 1)[0].strip() for f in first_line(path).split("\t")]
    return {name: i for i, name in enumerate(names)}


def _need(header: dict[str, int], path: Path, *choices: str) -> int:
    for name in choices:
        if name in header:
            return header[name]
    hint = " (one field: is the file tab-separated?)" if len(header) == 1 else ""
    raise IngestError(f"{path}, line 1: the header has no field {' or '.join(repr(c) for c in choices)} "
                      f"(fields: {', '.join(header)}){hint}")


def read_recbole_atomic(inter_path: Path, item_path: Path, budget: BadLines) -> tuple[Chunks, Chunks]:
    """`{stem}.inter` / `{stem}.item`, tab-separated with typed headers. Title = `title`-like field,
    with " (year)" appended from `release_year` as MovieLens's own u.item has it; categories from a
    `class`/`genre`-like token_seq field (RecBole separates tokens with a space)."""
    inter = _atomic_header(inter_path)
    user, item, ts = (_need(inter, inter_path, f) for f in ("user_id", "item_id", "timestamp"))
    rating_col = inter.get("rating")

    def interaction(text: str) -> tuple:
        parts = split_fields(text, "\t", len(inter))
        value = rating(parts[rating_col]) if rating_col is not None else None
        return identifier(parts[user], "user_id"), identifier(parts[item], "item_id"), seconds(parts[ts]), value

    head = _atomic_header(item_path)
    item_col = _need(head, item_path, "item_id")
    title_col = _need(head, item_path, "title", "movie_title", "name", "item_name", "app_name")
    year_col = next((head[f] for f in ("release_year", "year") if f in head), None)
    class_col = next((head[f] for f in ("class", "genre", "genres", "categories", "category") if f in head), None)

    def item_fields(text: str) -> tuple:
        parts = split_fields(text, "\t", len(head))
        title, year = parts[title_col].strip(), parts[year_col].strip() if year_col is not None else ""
        if title and len(year) == 4 and year.isdigit() and not title.endswith(f"({year})"):
            title = f"{title} ({year})"
        categories = parts[class_col].split(" ") if class_col is not None else []
        return item_row(identifier(parts[item_col], "item_id"), title, categories)

    return (parse_rows(inter_path, interaction, INTERACTIONS, budget, skip_lines=1),
            parse_rows(item_path, item_fields, ITEMS, budget, skip_lines=1))


def read_movielens_100k(inter_path: Path, item_path: Path, budget: BadLines) -> tuple[Chunks, Chunks]:
    """u.data: user, item, rating, timestamp (tab); u.item: pipe-separated, latin-1, the title
    carries the year; 19 genre flags in columns 6..24."""

    def interaction(text: str) -> tuple:
        user, item, value, ts = split_fields(text, "\t", 4)
        return identifier(user, "user id"), identifier(item, "item id"), seconds(ts), rating(value)

    def movie(text: str) -> tuple:
        parts = split_fields(text, "|", 5 + len(ML100K_GENRES))
        flags = parts[5:]
        if any(f not in ("0", "1") for f in flags):
            raise ValueError(f"genre flags must be 0 or 1, got {'|'.join(flags)}")
        return item_row(identifier(parts[0], "movie id"), parts[1],
                        (g for g, f in zip(ML100K_GENRES, flags) if f == "1"))

    return (parse_rows(inter_path, interaction, INTERACTIONS, budget, encoding="latin-1"),
            parse_rows(item_path, movie, ITEMS, budget, encoding="latin-1"))


def read_movielens_1m(inter_path: Path, item_path: Path, budget: BadLines) -> tuple[Chunks, Chunks]:
    """ratings.dat: UserID::MovieID::Rating::Timestamp; movies.dat: MovieID::Title::Genres (latin-1)."""

    def interaction(text: str) -> tuple:
        user, item, value, ts = split_fields(text, "::", 4)
        return identifier(user, "user id"), identifier(item, "movie id"), seconds(ts), rating(value)

    def movie(text: str) -> tuple:
        item, title, genres = split_fields(text, "::", 3)
        return item_row(identifier(item, "movie id"), title, genres.split("|"))

    return (parse_rows(inter_path, interaction, INTERACTIONS, budget, encoding="latin-1"),
            parse_rows(item_path, movie, ITEMS, budget, encoding="latin-1"))


AMAZON_REVIEW = pa.schema(
    [("reviewerID", pa.string()), ("asin", pa.string()), ("unixReviewTime", pa.int64()), ("overall", pa.float64())]
)
AMAZON_REVIEW_NAMES = {"reviewerID": "user_id", "asin": "item_id", "unixReviewTime": "timestamp", "overall": "rating"}


def _amazon_reviews(path: Path, budget: BadLines) -> Chunks:
    """Amazon 2014 and 2018 reviews (JSON lines): reviewerID, asin, unixReviewTime (s), overall."""
    for table in json_records(path, AMAZON_REVIEW, ("reviewerID", "asin", "unixReviewTime"), budget):
        yield rename(table, AMAZON_REVIEW_NAMES)


def read_amazon_2014(inter_path: Path, item_path: Path, budget: BadLines) -> tuple[Chunks, Chunks]:
    """reviews_{Cat}_5.json.gz (JSON lines); meta_{Cat}.json.gz (one Python-literal dict per line,
    categories a list of category paths, flattened unique in order)."""
    meta = pa.schema([("asin", pa.string()), ("title", pa.string()), ("categories", pa.list_(pa.list_(pa.string())))])

    def product(record) -> tuple:
        asin, title, paths = pick(record, meta, frozenset({"asin"}))
        return item_row(asin, title, (c for path in paths or [] for c in path or []))

    return _amazon_reviews(inter_path, budget), literal_records(item_path, product, ITEMS, budget)


def read_amazon_2018(inter_path: Path, item_path: Path, budget: BadLines) -> tuple[Chunks, Chunks]:
    """{Cat}_5.json.gz and meta_{Cat}.json.gz, both JSON lines; titles may hold HTML entities."""
    meta = pa.schema([("asin", pa.string()), ("title", pa.string()), ("category", pa.list_(pa.string()))])
    items = (
        to_items(t, "asin", lambda r: r["category"] or [])
        for t in json_records(item_path, meta, ("asin",), budget)
    )
    return _amazon_reviews(inter_path, budget), items


def read_amazon_2023(inter_path: Path, item_path: Path, budget: BadLines) -> tuple[Chunks, Chunks]:
    """{Cat}.jsonl(.gz): user_id, parent_asin, rating, timestamp (ms); meta_{Cat}.jsonl(.gz):
    parent_asin, title, categories (often empty: then main_category)."""
    review = pa.schema(
        [("user_id", pa.string()), ("parent_asin", pa.string()), ("timestamp", pa.int64()), ("rating", pa.float64())]
    )
    meta = pa.schema([("parent_asin", pa.string()), ("title", pa.string()),
                      ("categories", pa.list_(pa.string())), ("main_category", pa.string())])

    def interactions() -> Chunks:
        for t in json_records(inter_path, review, ("user_id", "parent_asin", "timestamp"), budget):
            t = t.set_column(2, "timestamp", pc.divide(t["timestamp"], 1000))  # ms -> s (integer division)
            yield rename(t, {"user_id": "user_id", "parent_asin": "item_id", "timestamp": "timestamp",
                             "rating": "rating"})

    items = (
        to_items(t, "parent_asin", lambda r: r["categories"] or [r["main_category"]])
        for t in json_records(item_path, meta, ("parent_asin",), budget)
    )
    return interactions(), items


def read_steam(inter_path: Path, item_path: Path, budget: BadLines) -> tuple[Chunks, Chunks]:
    """steam_reviews.json.gz and steam_games.json.gz, Python-literal dicts. Reviews: username (else
    user_id), product_id, date YYYY-MM-DD (UTC midnight), no rating. Games: id, title (else
    app_name), genres (else tags); a game without id yields an item row with a null id, which
    ingest drops and counts."""
    review = pa.schema([("username", pa.string()), ("user_id", pa.string()),
                        ("product_id", pa.string()), ("date", pa.string())])
    game = pa.schema([("id", pa.string()), ("title", pa.string()), ("app_name", pa.string()),
                      ("genres", pa.list_(pa.string())), ("tags", pa.list_(pa.string()))])

    def interaction(record) -> tuple:
        username, user_id, product, date = pick(record, review, frozenset({"product_id", "date"}))
        user = username if username is not None and username.strip() else user_id
        if user is None:
            raise ValueError("missing key 'username' (and 'user_id')")
        return identifier(user, "username"), identifier(product, "product_id"), date_seconds(date), None

    def item(record) -> tuple:
        item_id, title, app_name, genres, tags = pick(record, game)
        return item_row(item_id, title or app_name, genres or tags or [])

    return (literal_records(inter_path, interaction, INTERACTIONS, budget),
            literal_records(item_path, item, ITEMS, budget))


def read_lastfm(inter_path: Path, item_path: Path, budget: BadLines) -> tuple[Chunks, Chunks]:
    """hetrec2011-lastfm-2k: user_taggedartists-timestamps.dat (userID artistID tagID timestamp-ms,
    one line per tag: ingest's (user, item, timestamp) deduplication keeps one), artists.dat
    (id name url pictureURL). Both tab-separated with a header, decoded as strict UTF-8 (an
    undecodable line is a malformed line). No ratings, no categories."""
    header = {name: i for i, name in enumerate(first_line(inter_path).split("\t"))}
    user, artist, ts = (_need(header, inter_path, f) for f in ("userID", "artistID", "timestamp"))
    artists = {name: i for i, name in enumerate(first_line(item_path).split("\t"))}
    artist_id, name = (_need(artists, item_path, f) for f in ("id", "name"))

    def interaction(text: str) -> tuple:
        parts = split_fields(text, "\t", len(header))
        return (identifier(parts[user], "userID"), identifier(parts[artist], "artistID"),
                seconds(parts[ts], per_second=1000), None)

    def item(text: str) -> tuple:
        parts = text.split("\t")
        if len(parts) <= max(artist_id, name):
            raise ValueError(f"expected at least {max(artist_id, name) + 1} tab-separated fields, got {len(parts)}")
        return item_row(identifier(parts[artist_id], "id"), parts[name], [])

    return (parse_rows(inter_path, interaction, INTERACTIONS, budget, skip_lines=1),
            parse_rows(item_path, item, ITEMS, budget, skip_lines=1))


# format -> (interactions file, items file, reader). Names are as distributed; `{category}` and
# `{stem}` come from the dataset's config. A plain file may stand for a .gz one and vice versa.
FORMATS: dict[str, tuple[str, str, Callable[[Path, Path, BadLines], tuple[Chunks, Chunks]]]] = {
    "recbole-atomic": ("{stem}.inter", "{stem}.item", read_recbole_atomic),
    "movielens-100k": ("u.data", "u.item", read_movielens_100k),
    "movielens-1m": ("ratings.dat", "movies.dat", read_movielens_1m),
    "amazon-2014": ("reviews_{category}_5.json.gz", "meta_{category}.json.gz", read_amazon_2014),
    "amazon-2018": ("{category}_5.json.gz", "meta_{category}.json.gz", read_amazon_2018),
    "amazon-2023": ("{category}.jsonl", "meta_{category}.jsonl", read_amazon_2023),
    "steam": ("steam_reviews.json.gz", "steam_games.json.gz", read_steam),
    "lastfm": ("user_taggedartists-timestamps.dat", "artists.dat", read_lastfm),
}


def embedded_folder() -> Path:
    """MovieLens-100K in RecBole's atomic format, shipped inside the recbole wheel."""
    found = importlib.util.find_spec("recbole")
    if found is None or not found.submodule_search_locations:
        raise IngestError("path 'embedded' needs the recbole package, which is not installed")
    return Path(list(found.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"


def _variants(name: str) -> list[str]:
    return [name, name.removesuffix(".gz")] if name.endswith(".gz") else [name, name + ".gz"]


def resolve_files(spec: dict) -> tuple[Path, Path]:
    """(interactions file, items file) of a dataset spec; errors name the dataset and the files expected."""
    dataset, fmt = spec.get("name", "<unnamed>"), spec.get("format")
    if fmt not in FORMATS:
        raise IngestError(f"dataset '{dataset}': unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    if "path" not in spec:
        raise IngestError(f"dataset '{dataset}': missing key 'path'")
    if spec["path"] == "embedded":
        if fmt != "recbole-atomic":
            raise IngestError(f"dataset '{dataset}': path 'embedded' is MovieLens-100K in format recbole-atomic, "
                              f"not {fmt}")
        folder = embedded_folder()
    else:
        folder = Path(spec["path"]).expanduser()
    inter_name, item_name, _ = FORMATS[fmt]
    if fmt.startswith("amazon") and not spec.get("category"):
        raise IngestError(f"dataset '{dataset}': format {fmt} needs key 'category' (e.g. Video_Games)")
    stem = spec.get("stem") or folder.name
    if fmt == "recbole-atomic" and not spec.get("stem") and not (folder / f"{stem}.inter").exists():
        found = sorted(folder.glob("*.inter")) if folder.is_dir() else []
        stem = found[0].stem if len(found) == 1 else stem  # the folder's only .inter file
    names = [n.format(category=spec.get("category"), stem=stem) for n in (inter_name, item_name)]
    if not folder.is_dir():
        raise IngestError(f"dataset '{dataset}': folder {folder} does not exist (expected files {' and '.join(names)})")
    paths = []
    for name in names:
        path = next((folder / v for v in _variants(name) if (folder / v).is_file()), None)
        if path is None:
            raise IngestError(f"dataset '{dataset}': {folder} has no file {' or '.join(_variants(name))}")
        paths.append(path)
    return paths[0], paths[1]

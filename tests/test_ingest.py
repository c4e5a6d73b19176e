"""Ingestion of every raw format into the canonical tables, and the errors bad input gets.

Fixtures in tests/fixtures/raw/<format>/ hold each format's files under their distributed names,
as plain text (latin-1 where MovieLens is); the formats distributed gzipped are gzipped here.
"""
from __future__ import annotations

import datetime
import gzip
import json
import logging
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workflow import formats, ingest
from workflow.formats import IngestError
from workflow.io import read_provenance

RAW = Path(__file__).resolve().parent / "fixtures" / "raw"
GZIPPED = {"amazon-2014", "amazon-2018", "steam"}  # distributed as .json.gz


def dataset(tmp_path: Path, fmt: str, *, gz: bool | None = None, **extra) -> dict:
    """The fixture of `fmt` laid out as distributed in a fresh folder; returns its spec."""
    folder = tmp_path / fmt
    folder.mkdir(parents=True)
    for src in sorted((RAW / fmt).iterdir()):
        if (fmt in GZIPPED) if gz is None else gz:
            (folder / (src.name + ".gz")).write_bytes(gzip.compress(src.read_bytes(), mtime=0))
        else:
            shutil.copy(src, folder / src.name)
    return {"name": f"tiny-{fmt}", "format": fmt, "path": str(folder), "category": "Video_Games", "max_bad_lines": 0,
            **extra}


def edit(spec: dict, name: str, change) -> Path:
    """Rewrite one file of a dataset: `change(list of byte lines) -> list of byte lines`."""
    path = Path(spec["path"]) / name
    data = path.read_bytes()
    zipped = data[:2] == b"\x1f\x8b"
    lines = change((gzip.decompress(data) if zipped else data).splitlines())
    out = b"".join(line + b"\n" for line in lines)
    path.write_bytes(gzip.compress(out) if zipped else out)
    return path


def rows(table: pa.Table) -> list[tuple]:
    return [tuple(r.values()) for r in table.to_pylist()]


def titles(items: pa.Table) -> dict[str, str]:
    return dict(zip(items["item_id"].to_pylist(), items["title"].to_pylist()))


def categories(items: pa.Table) -> dict[str, list[str]]:
    return dict(zip(items["item_id"].to_pylist(), items["categories"].to_pylist()))


def utc(*date) -> int:
    return int(datetime.datetime(*date, tzinfo=datetime.timezone.utc).timestamp())


# --- every format -------------------------------------------------------------------------------


def test_recbole_atomic(tmp_path):
    inter, items = ingest.ingest(dataset(tmp_path, "recbole-atomic"))  # stem from the folder's only .inter
    assert rows(inter) == [
        ("1", "10", 881250949, 4.0), ("1", "11", 881250950, 3.5),
        ("2", "10", 881250960, 5.0),  # the repeated (2, 10, 881250960) row is dropped, the first kept
        ("2", "12", 881250961, 1.0),
    ]
    assert titles(items) == {"10": "Toy Story (1995)", "11": "Heat (1995)", "12": "Nowhere Year"}  # 13: blank
    assert categories(items)["10"] == ["Animation", "Children's", "Comedy"]


def test_movielens_100k(tmp_path):
    inter, items = ingest.ingest(dataset(tmp_path, "movielens-100k"))
    assert rows(inter)[:3] == [("186", "302", 891717742, 3.0), ("196", "242", 881250949, 3.0),
                               ("196", "302", 881251000, 4.0)]
    assert inter.num_rows == 5
    assert titles(items)["377"] == "Misérables, Les (1995)"  # latin-1, year kept
    assert categories(items)["302"] == ["Crime", "Film-Noir", "Mystery", "Thriller"]
    assert categories(items)["242"] == ["Comedy"]


def test_movielens_1m(tmp_path):
    inter, items = ingest.ingest(dataset(tmp_path, "movielens-1m"))
    assert inter.num_rows == 4 and inter["user_id"].to_pylist() == ["1", "1", "2", "2"]
    assert rows(inter)[0] == ("1", "1193", 978300760, 5.0)
    assert titles(items)["2"] == "Metisse (Café au Lait) (1993)"
    assert categories(items)["661"] == ["Animation", "Children's", "Musical"]


def test_amazon_2014(tmp_path):
    inter, items = ingest.ingest(dataset(tmp_path, "amazon-2014"))
    assert inter.num_rows == 4  # kept as read, 6050036071 included: prepare drops untitled items
    assert rows(inter)[0] == ("A1INA0F5CWW3J4", "6050036071", 1348012800, 3.0)
    assert titles(items) == {"0700099867": "Dirt 3", "7100027950": "Heroes & Generals"}
    assert categories(items)["0700099867"] == ["Video Games", "Xbox 360", "Games", "PC"]


def test_amazon_2018(tmp_path):
    inter, items = ingest.ingest(dataset(tmp_path, "amazon-2018"))
    assert inter.num_rows == 3  # the review posted twice with the same time stamp counts once
    assert rows(inter)[1] == ("A1JGAP0185YJI6", "B00000DMAT", 1424649600, 3.0)
    assert titles(items) == {"0700026657": "Anno 2070", "B00000DMAT": "Mario & Sonic at the Olympic Games"}
    assert categories(items)["B00000DMAT"] == ["Video Games", "Nintendo Wii", "Games"]


@pytest.mark.parametrize("gz", [False, True])
def test_amazon_2023(tmp_path, gz):
    inter, items = ingest.ingest(dataset(tmp_path, "amazon-2023", gz=gz))
    assert rows(inter) == [
        ("AFKZENTNBQ7A7V7UXW5JJI6UGRYQ", "B07DK1H3H5", 1656865374, 5.0),
        ("AGCI7FAH4GL5FI65HYLKWTMFZ2CQ", "B07SRWRH5D", 1587051114, 5.0),  # ms -> s
        ("AGCI7FAH4GL5FI65HYLKWTMFZ2CQ", "B07DK1H3H5", 1608186804, 4.0),
    ]
    assert titles(items)["B07SRWRH5D"] == "Spyro Reignited Trilogy \u2013 Xbox One"
    assert categories(items) == {"B07DK1H3H5": ["Video Games", "PlayStation 4", "Games"],
                                 "B07SRWRH5D": ["All Electronics"]}  # empty categories: main_category


def test_steam(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        inter, items = ingest.ingest(dataset(tmp_path, "steam"))
    assert rows(inter) == [
        ("Ariman1", "328100", utc(2017, 8, 2), None),
        ("Chaos Syren", "725280", utc(2017, 12, 17), None),
        ("Chaos Syren", "761140", utc(2018, 1, 4), None),
    ]
    assert titles(items) == {"725280": "Ironbound", "761140": "Lost Summoner Kitty"}  # 328100 has no title
    assert categories(items) == {"725280": ["Strategy", "Card Game"],
                                 "761140": ["Action", "Casual", "Indie", "Simulation", "Strategy"]}
    assert "skipped 1 item records without an id" in caplog.text


def test_lastfm(tmp_path):
    inter, items = ingest.ingest(dataset(tmp_path, "lastfm"))
    assert rows(inter) == [  # one interaction per (user, artist, time), however many tags
        ("2", "52", 1238536800, None), ("2", "63", 1238536800, None),
        ("2", "73", 1241128800, None), ("3", "52", 1270072800, None),
    ]
    assert titles(items) == {"52": "Morcheeba", "63": "Enigma", "73": "Björk"}
    assert categories(items)["73"] == []


def test_gzip_found_by_magic_bytes(tmp_path):
    spec = dataset(tmp_path, "movielens-1m")
    path = Path(spec["path"]) / "ratings.dat"
    path.write_bytes(gzip.compress(path.read_bytes()))  # gzip content under the plain name
    assert ingest.ingest(spec)[0].num_rows == 4
    spec = dataset(tmp_path / "plain", "steam")
    path = Path(spec["path"]) / "steam_games.json.gz"
    path.write_bytes(gzip.decompress(path.read_bytes()))
    with pytest.raises(IngestError, match=r"steam_games\.json\.gz: not a gzip file"):
        ingest.ingest(spec)


def test_embedded_movielens_100k():
    inter, items = ingest.ingest({"name": "ml-100k", "format": "recbole-atomic", "path": "embedded",
                                  "max_bad_lines": 0})
    assert inter.num_rows == 100_000
    assert len(set(inter["user_id"].to_pylist())) == 943
    assert items.num_rows == 1682
    assert titles(items)["1"] == "Toy Story (1995)"
    assert categories(items)["1"] == ["Animation", "Children's", "Comedy"]


def test_cli_writes_canonical_tables(tmp_path):
    spec = dataset(tmp_path, "movielens-1m")
    out = tmp_path / "out"
    code = ingest.main(["--spec", json.dumps(spec), "--interactions", str(out / "interactions.parquet"),
                        "--items", str(out / "items.parquet")])
    assert code == 0
    assert pq.read_schema(out / "interactions.parquet").remove_metadata().equals(formats.INTERACTIONS)
    assert pq.read_schema(out / "items.parquet").remove_metadata().equals(formats.ITEMS)
    assert read_provenance(out / "items.parquet")["config"] == spec
    assert pq.read_table(out / "items.parquet")["item_id"].to_pylist() == ["1193", "2", "661"]


def test_clean_text():
    assert formats.clean_text("  Mario &amp; Sonic\n\t at  the&nbsp;Games ") == "Mario & Sonic at the Games"
    assert formats.clean_text(" &nbsp; ") is None and formats.clean_text(None) is None
    assert formats.clean_list(["a", " a ", "", None, "b &amp; c"]) == ["a", "b & c"]


def test_fast_and_line_by_line_json_agree():
    path = RAW / "amazon-2023" / "meta_Video_Games.jsonl"
    schema = pa.schema([("parent_asin", pa.string()), ("title", pa.string()),
                        ("categories", pa.list_(pa.string())), ("main_category", pa.string())])
    block = path.read_bytes()
    fast = formats._fast_json_block(block, schema, frozenset({"parent_asin"}))
    assert fast is not None
    slow = formats.parse_rows(path, lambda t: formats.pick(formats.json_value(t), schema), schema,
                              formats.BadLines(), lines=formats.block_lines(1, block))
    assert fast.equals(pa.concat_tables(slow))


def test_sort_unique_matches_arrow_sort():
    """Sorting by rank codes gives Arrow's own string order; the first of each duplicate is kept."""
    import random

    rng = random.Random(0)
    data = [(rng.choice(["b", "a", "ab", "B", "é", "10", "9"]), rng.randrange(3), rng.random()) for _ in range(300)]
    table = pa.Table.from_pylist([{"u": u, "t": t, "r": r} for u, t, r in data])
    table = pa.concat_tables([table.slice(0, 100), table.slice(100)])  # two chunks
    got = ingest.sort_unique(table, ["u", "t"])
    firsts = {}
    for u, t, r in data:
        firsts.setdefault((u, t), r)
    expected = pa.Table.from_pylist([{"u": u, "t": t, "r": r} for (u, t), r in firsts.items()])
    assert got.equals(expected.sort_by([("u", "ascending"), ("t", "ascending")]))


# --- bad input ----------------------------------------------------------------------------------


def test_unknown_format(tmp_path):
    with pytest.raises(IngestError, match=r"dataset 'x': unknown format 'amazon-2099'"):
        ingest.ingest({"name": "x", "format": "amazon-2099", "path": str(tmp_path)})


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(IngestError, match=r"dataset 'gone': folder .* does not exist .*ratings\.dat and movies\.dat"):
        ingest.ingest({"name": "gone", "format": "movielens-1m", "path": str(tmp_path / "nowhere")})
    spec = dataset(tmp_path, "amazon-2018")
    (Path(spec["path"]) / "meta_Video_Games.json.gz").unlink()
    with pytest.raises(IngestError, match=r"dataset 'tiny-amazon-2018': .* has no file meta_Video_Games\.json\.gz"):
        ingest.ingest(spec)
    with pytest.raises(IngestError, match=r"needs key 'category'"):
        ingest.ingest({**spec, "category": None})


def test_empty_file(tmp_path):
    spec = dataset(tmp_path, "movielens-100k")
    (Path(spec["path"]) / "u.data").write_bytes(b"")
    with pytest.raises(IngestError, match=r"u\.data: file is empty"):
        ingest.ingest(spec)
    spec = dataset(tmp_path, "steam")
    (Path(spec["path"]) / "steam_games.json.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(IngestError, match=r"steam_games\.json\.gz: file is empty"):
        ingest.ingest(spec)


def test_no_usable_title(tmp_path):
    spec = dataset(tmp_path, "movielens-1m")
    edit(spec, "movies.dat", lambda lines: [line.split(b"::")[0] + b":: ::Drama" for line in lines])
    with pytest.raises(IngestError, match=r"dataset 'tiny-movielens-1m': no item with a usable title in .*movies\.dat"):
        ingest.ingest(spec)


def test_truncated_gzip(tmp_path):
    spec = dataset(tmp_path, "amazon-2018")
    path = Path(spec["path"]) / "Video_Games_5.json.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(IngestError, match=r"Video_Games_5\.json\.gz: truncated or corrupt gzip stream after line (\d)") as err:
        ingest.ingest(spec)
    assert int(err.value.args[0].split("after line ")[1][0]) < 4  # the last complete line before the cut


def test_not_json_line(tmp_path):
    spec = dataset(tmp_path, "amazon-2023")
    edit(spec, "Video_Games.jsonl", lambda lines: lines[:2] + [b'{"rating": 5.0, "user_id": '] + lines[2:])
    with pytest.raises(IngestError, match=r"Video_Games\.jsonl, line 3: not valid JSON"):
        ingest.ingest(spec)


def test_missing_key(tmp_path):
    spec = dataset(tmp_path, "amazon-2018")
    edit(spec, "Video_Games_5.json.gz", lambda lines: [lines[0], lines[1].replace(b'"asin"', b'"ASIN"')] + lines[2:])
    with pytest.raises(IngestError, match=r"Video_Games_5\.json\.gz, line 2: missing key 'asin'"):
        ingest.ingest(spec)
    spec = dataset(tmp_path / "empty", "amazon-2023")  # Arrow's fast path hands the block to json.loads
    edit(spec, "Video_Games.jsonl", lambda lines: lines[:2] + [lines[2].replace(b'"AFKZENTNBQ7A7V7UXW5JJI6UGRYQ"', b'""')])
    with pytest.raises(IngestError, match=r"Video_Games\.jsonl, line 3: empty value for key 'user_id'"):
        ingest.ingest(spec)


def test_not_a_python_literal(tmp_path):
    spec = dataset(tmp_path, "amazon-2014")
    edit(spec, "meta_Video_Games.json.gz", lambda lines: lines + [b"{'asin': 'B1', 'title': __import__('os')}"])
    with pytest.raises(IngestError, match=r"meta_Video_Games\.json\.gz, line 4: not a Python literal"):
        ingest.ingest(spec)


def test_undecodable_bytes(tmp_path):
    spec = dataset(tmp_path, "lastfm")
    edit(spec, "artists.dat", lambda lines: lines[:2] + [lines[2].replace(b"Enigma", b"Enigm\xe0")] + lines[3:])
    with pytest.raises(IngestError, match=r"artists\.dat, line 3: undecodable bytes \(utf-8"):
        ingest.ingest(spec)


@pytest.mark.parametrize(
    "fmt, name, line, bad",
    [
        ("movielens-1m", "ratings.dat", 2, b"1::661::3::yesterday"),
        ("steam", "steam_reviews.json.gz", 2, b"{'username': 'a', 'product_id': '1', 'date': '17/12/2017'}"),
        ("lastfm", "user_taggedartists-timestamps.dat", 2, b"2\t52\t13\t12:00"),
        ("recbole-atomic", "tiny.inter", 3, b"1\t11\t3\t1e30"),
        ("amazon-2018", "Video_Games_5.json.gz", 1,
         b'{"reviewerID": "A", "asin": "B", "unixReviewTime": "07 9, 2012", "overall": 1.0}'),
    ],
)
def test_unparseable_timestamp(tmp_path, fmt, name, line, bad):
    spec = dataset(tmp_path, fmt)
    edit(spec, name, lambda lines: lines[: line - 1] + [bad] + lines[line:])
    with pytest.raises(IngestError, match=rf"{name.replace('.', '[.]')}, line {line}: .*(timestamp|unixReviewTime)"):
        ingest.ingest(spec)


@pytest.mark.parametrize("bad", [b"1::661::nan::978300760", b"1::661::inf::978300760", b"1::661::good::978300760"])
def test_unparseable_rating(tmp_path, bad):
    # float() reads 'nan' and 'inf'; a rating threshold would then drop the line without a word
    spec = dataset(tmp_path, "movielens-1m")
    edit(spec, "ratings.dat", lambda lines: lines[:1] + [bad] + lines[2:])
    with pytest.raises(IngestError, match=r"ratings\.dat, line 2: .*unparseable rating"):
        ingest.ingest(spec)


def test_atomic_header_not_tab_separated(tmp_path):
    spec = dataset(tmp_path, "recbole-atomic")
    edit(spec, "tiny.inter", lambda lines: [lines[0].replace(b"\t", b",")] + lines[1:])
    with pytest.raises(IngestError, match=r"tiny\.inter, line 1: the header has no field .*is the file tab-separated\?"):
        ingest.ingest(spec)


def test_wrong_field_count(tmp_path):
    spec = dataset(tmp_path, "movielens-100k")
    edit(spec, "u.item", lambda lines: lines[:1] + [lines[1].rsplit(b"|", 1)[0]] + lines[2:])
    with pytest.raises(IngestError, match=r"u\.item, line 2: expected 24 fields separated by '\|', got 23"):
        ingest.ingest(spec)


def test_max_bad_lines(tmp_path, caplog):
    spec = dataset(tmp_path, "amazon-2018", max_bad_lines=1)
    edit(spec, "Video_Games_5.json.gz", lambda lines: lines[:1] + [b"not json"] + lines[1:])
    with caplog.at_level(logging.WARNING):
        inter, _ = ingest.ingest(spec)
    assert inter.num_rows == 3
    assert "Video_Games_5.json.gz, line 2: not valid JSON" in caplog.text
    assert "skipped 1 malformed lines" in caplog.text
    edit(spec, "Video_Games_5.json.gz", lambda lines: lines + [b'{"reviewerID": "A"}'])
    with pytest.raises(IngestError, match=r"line 6: missing key 'asin' \(more than max_bad_lines=1"):
        ingest.ingest(spec)


def test_line_numbers_across_blocks(tmp_path, monkeypatch):
    """Lines are counted right when a file is read in many blocks, some lines longer than a block,
    and a block with a bad line is parsed line by line, keeping its good lines."""
    monkeypatch.setattr(formats, "BLOCK_BYTES", 300)
    spec = dataset(tmp_path, "amazon-2023", max_bad_lines=1)
    edit(spec, "Video_Games.jsonl", lambda lines: lines[:2] + [b"{oops}"] + lines[2:])
    inter, _ = ingest.ingest(spec)
    assert inter.num_rows == 3
    edit(spec, "Video_Games.jsonl", lambda lines: lines + [b"[]"])
    with pytest.raises(IngestError, match=r"Video_Games\.jsonl, line 5: expected an object"):
        ingest.ingest(spec)


def test_failed_run_leaves_no_artifact(tmp_path):
    spec = dataset(tmp_path, "amazon-2023")
    edit(spec, "meta_Video_Games.jsonl", lambda lines: lines + [b"garbage"])
    out = tmp_path / "out"
    out.mkdir()
    code = ingest.main(["--spec", json.dumps(spec), "--interactions", str(out / "interactions.parquet"),
                        "--items", str(out / "items.parquet")])
    assert code == 1
    assert list(out.iterdir()) == []

"""Ingestion throughput and memory on an Amazon-2023-format review file.

Generates N review lines (default 2,000,000; gzip, the keys and typical value sizes of the 2023
release) and a small meta file in a temp folder, runs `python -m workflow.ingest` on them in a
child process, and prints lines/s (wall clock of the whole command, start-up included) and the
child's peak RSS. Also prints the line-by-line (json.loads) rate on a sample, for comparison with
Arrow's block parser. Targets: >= 100,000 lines/s, peak RSS <= 1.5 GB.

    python bench/bench_ingest.py [--lines 2000000] [--keep DIR]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ("great product works well quality price love would buy again the it this and for with not but "
         "my was very easy use fit size color recommend after months battery game fun kids").split()


def ids(rng: random.Random, n: int, length: int, prefix: str = "") -> list[str]:
    alphabet = string.ascii_uppercase + string.digits
    return [prefix + "".join(rng.choices(alphabet, k=length - len(prefix))) for _ in range(n)]


def generate(folder: Path, n_lines: int, seed: int = 0) -> tuple[Path, Path]:
    """Review lines as in Amazon Reviews 2023 (text ~ 350 characters on average)."""
    rng = random.Random(seed)
    users = ids(rng, max(n_lines // 5, 1), 28, "A")
    items = ids(rng, max(n_lines // 20, 1), 10, "B0")
    texts = [" ".join(rng.choices(WORDS, k=max(1, int(rng.expovariate(1 / 60))))) for _ in range(5000)]
    titles = [json.dumps(t[:40]) for t in texts]  # JSON-quoted once; lines are formatted directly (fast)
    texts = [json.dumps(t) for t in texts]
    image = '[{"small_image_url": "https://m.media-amazon.com/images/I/71x.jpg"}]'
    reviews = folder / "Video_Games.jsonl.gz"
    with gzip.open(reviews, "wt", compresslevel=1) as f:
        for i in range(n_lines):
            item = rng.choice(items)
            f.write(
                f'{{"rating": {rng.randint(1, 5)}.0, "title": {titles[(i * 7) % 5000]}, '
                f'"text": {texts[i % 5000]}, "images": {"[]" if i % 10 else image}, "asin": "{item}", '
                f'"parent_asin": "{item}", "user_id": "{rng.choice(users)}", '
                f'"timestamp": {1_400_000_000_000 + rng.randrange(300_000_000_000)}, '
                f'"helpful_vote": {rng.randrange(5)}, "verified_purchase": {"true" if i % 3 else "false"}}}\n'
            )
    meta = folder / "meta_Video_Games.jsonl.gz"
    with gzip.open(meta, "wt", compresslevel=1) as f:
        for item in items:
            f.write(json.dumps({"main_category": "Video Games", "title": f"Game {item} &amp; Controller",
                                "average_rating": 4.1, "rating_number": 10, "features": [], "description": [],
                                "categories": ["Video Games", "PC"], "parent_asin": item}) + "\n")
    return reviews, meta


def parse_rates(path: Path, n: int = 200_000) -> tuple[float, float]:
    """Lines/s of Arrow's block parser and of the line-by-line json.loads path on the same first
    ~n lines (already decompressed: parsing only)."""
    import pyarrow as pa

    from workflow import formats

    schema = pa.schema([("user_id", pa.string()), ("parent_asin", pa.string()),
                        ("timestamp", pa.int64()), ("rating", pa.float64())])
    blocks = []
    for first, block in formats.read_blocks(path, block_bytes=4 << 20):
        blocks.append((first, block))
        if first + block.count(b"\n") > n:
            break
    lines = sum(block.count(b"\n") for _, block in blocks)
    start = time.perf_counter()
    for _, block in blocks:
        assert formats._fast_json_block(block, schema, frozenset({"user_id"})) is not None
    fast = lines / (time.perf_counter() - start)
    start = time.perf_counter()
    for first, block in blocks:
        for _ in formats.parse_rows(path, lambda text: formats.pick(formats.json_value(text), schema), schema,
                                    formats.BadLines(), lines=formats.block_lines(first, block)):
            pass
    return fast, lines / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lines", type=int, default=2_000_000)
    p.add_argument("--keep", type=Path, default=None, help="generate into this folder and keep it")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        reviews, _ = generate(folder, args.lines)
        print(f"generated {args.lines:,} lines ({reviews.stat().st_size / 1e6:.0f} MB gzip) "
              f"in {time.perf_counter() - start:.1f} s")
        spec = {"name": "bench", "format": "amazon-2023", "path": str(folder), "category": "Video_Games",
                "max_bad_lines": 0}
        cmd = [sys.executable, "-m", "workflow.ingest", "--spec", json.dumps(spec),
               "--interactions", str(folder / "out" / "interactions.parquet"), "--items", str(folder / "out" / "items.parquet")]
        start = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - start
        output = child.stdout.read().decode()
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"ingest failed:\n{output}")
        peak_gb = usage.ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux
        cpu = usage.ru_utime + usage.ru_stime
        print(f"ingest (whole command, start-up included): {elapsed:.1f} s wall, {cpu:.1f} s CPU; "
              f"{args.lines / elapsed:,.0f} lines/s (target >= 100,000); peak RSS {peak_gb:.2f} GB (target <= 1.5); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        fast, slow = parse_rates(reviews)
        print(f"parsing only, first ~200,000 lines: Arrow block parser {fast:,.0f} lines/s, line-by-line "
              f"json.loads {slow:,.0f} lines/s ({fast / slow:.1f}x)")


if __name__ == "__main__":
    main()

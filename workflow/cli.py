"""Shared command-line plumbing. Each stage module has its own `main()` and runs as
`python -m workflow.<stage> ...`; Snakemake rules call exactly that, so every stage also runs
without Snakemake. Config slices travel as one JSON argument (`--spec`)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Callable, Sequence

log = logging.getLogger("workflow")


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


def json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc


def set_threads(threads: int | None) -> None:
    """Match torch's intra-op threads to the rule's `threads` (Snakemake sets OMP_NUM_THREADS too).
    Applies to stages that imported torch at module level, before `run` is called."""
    torch = sys.modules.get("torch")
    if torch is None:  # a stage that does not use torch does not pay for importing it
        return
    n = threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or os.cpu_count() or 1
    torch.set_num_threads(n)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all)")
    return p


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """--dataset, --run, --selection, --seed: the run (a run name such as sft-open-n256, workflow/runs.py)
    an LLM stage's outputs belong to."""
    p.add_argument("--dataset", required=True)
    p.add_argument("--run", required=True, help="the run name, e.g. sft-open-n256 (workflow/runs.py)")
    p.add_argument("--selection", required=True)
    p.add_argument("--seed", type=int, required=True)


def add_training_arguments(p: argparse.ArgumentParser, method_block: str) -> None:
    """The inputs and output every LoRA training stage takes: the base model folder, the samples,
    items and selection, the --spec (with the method's config block) and seed, the adapter to write."""
    p.add_argument("--model-dir", required=True, help="the base model folder (rule base_model)")
    p.add_argument("--samples", required=True)
    p.add_argument("--items", required=True)
    p.add_argument("--selection", required=True, help="Parquet with the sample_id column of the train samples to use")
    p.add_argument("--spec", type=json_arg, required=True,
                   help=f'JSON {{"llm": {{...}}, "{method_block}": {{...}}, "domain": "movie", "prompt": "open", '
                        f'"budget": null}}')
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="adapter folder to write")


def run(main: Callable[[argparse.Namespace], Any], p: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse, set up logging and threads, run; a handled error becomes one clear line and exit 1."""
    args = p.parse_args(argv)
    setup_logging()
    set_threads(getattr(args, "threads", None))
    try:
        main(args)
    except (ValueError, FileNotFoundError, OSError, KeyError) as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        return 1
    return 0

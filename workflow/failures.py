"""What a failed run shows: the tail of each failed job's log (the Snakefile's `onerror`).

Snakemake names a failed job's log ("log: ... (check log file(s) for error details)") and shows it
only with `--show-failed-logs` (the profiles set it); without a profile the error is one cd away.
The failed jobs' logs are read from those lines of Snakemake's own log of the run.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Iterable, TextIO

LOG_LINE = re.compile(r"^\s*log: (.+) \(check log file\(s\) for error details\)\s*$")
TAIL_LINES = 20


def failed_logs(snakemake_logs: Iterable[str | Path]) -> list[Path]:
    """The logs of the failed jobs named in Snakemake's logs of a run, each once, in order."""
    found: dict[Path, None] = {}
    for main in snakemake_logs:
        try:
            text = Path(main).read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            match = LOG_LINE.match(line)
            if match:
                found.update((Path(p.strip()), None) for p in match[1].split(", "))
    return list(found)


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of a job's log under a header naming it."""
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"log {path}: not found"
    shown = content[-lines:]
    cut = f" (last {len(shown)} of {len(content)} lines)" if len(content) > lines else ""
    return "\n".join([f"log {path}{cut}:", *(f"    {line}" for line in shown)])


def print_failed_logs(snakemake_logs, shown: bool = False, out: TextIO | None = None) -> None:
    """Print the tail of every failed job's log, unless Snakemake showed them (`shown`)."""
    if shown:
        return
    if isinstance(snakemake_logs, (str, Path)):
        snakemake_logs = [snakemake_logs]
    for path in failed_logs(snakemake_logs or []):
        print(tail(path), file=out or sys.stderr)

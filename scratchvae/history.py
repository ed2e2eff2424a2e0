"""RUN/metrics.jsonl: one JSON row per finished epoch, appended after its checkpoint; read
back (a last line cut short by a killed append left out); rebuilt from the checkpoints that carry
the rows it lacks; and repaired to the history of the checkpoint a run continues from.
"""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import list_checkpoints, read_meta, write_text
from .errors import CheckpointError, InputError, ScratchVAEError

METRICS = "metrics.jsonl"


def append_metrics(run_dir, row):
    """Append one epoch's row to RUN/metrics.jsonl."""
    path = Path(run_dir) / METRICS
    try:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as err:
        raise ScratchVAEError(f"could not append to {path}: {err.strerror or err} "
                              f"(the checkpoint of epoch {row['epoch']} was written)") from None


def _read_rows(path):
    """The rows of a metrics file, and whether its last line was cut short (a killed append)."""
    if not path.exists():
        return [], False
    lines = path.read_text().split("\n")
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if i == len(lines):     # the last line, with no newline: an append cut short
                return rows, True
            raise InputError(f"{path}: line {i} is not JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            raise InputError(f"{path}: line {i} is not a metrics row (a JSON object with an 'epoch')")
        rows.append(row)
    return rows, False


def read_history(run_dir, upto_epoch=None):
    """The rows of RUN/metrics.jsonl (those of epochs ≤ ``upto_epoch`` if given); a last line
    cut short by a killed append is left out."""
    rows = _read_rows(Path(run_dir) / METRICS)[0]
    if upto_epoch is not None:
        rows = [r for r in rows if r["epoch"] <= upto_epoch]
    return rows


def run_history(run_dir, path, meta):
    """The metrics rows of epochs 1..``meta['epoch']`` of the run whose checkpoint ``path`` has
    ``meta``: those of metrics.jsonl, and rows it lacks rebuilt from the checkpoints that carry
    them (the row of an epoch whose process was killed before appending it)."""
    epoch = meta["epoch"]
    rows = {r["epoch"]: r for r in read_history(run_dir, upto_epoch=epoch)}
    missing = set(range(1, epoch + 1)) - set(rows)
    sources = [meta] if missing else []
    if missing - {epoch}:
        sources += [_meta_or_none(p) for p in list_checkpoints(Path(path).parent) if p != Path(path)]
    for m in sources:
        row = (m or {}).get("metrics")
        if isinstance(row, dict) and row.get("epoch") in missing:
            rows[row["epoch"]] = row
            missing.discard(row["epoch"])
    return [rows[e] for e in sorted(rows)]


def _meta_or_none(path):
    try:
        return read_meta(path)
    except CheckpointError:
        return None


def repair_metrics(run_dir, rows):
    """Make RUN/metrics.jsonl hold exactly ``rows`` (rewritten atomically, only if it differs);
    returns whether it was rewritten."""
    path = Path(run_dir) / METRICS
    have, torn = _read_rows(path)
    if have == rows and not torn:
        return False
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return True

"""Benchmark data: a hub dataset or a local copy, checked against the task's schema, images left
encoded so that DataLoader workers decode them (and a corrupt one fails only its item).

    data = load_eval_data("Lin-Chen/MMStar", split="val", columns=["question", ...], image_columns=["image"])
    data = load_eval_data("/data/mmstar.parquet", split="val", ...)        # or a folder, or save_to_disk
    data.rows[i]            # the text columns of row i (a dict)
    data.images[i]          # the encoded images of row i (a list), read lazily
    data.image_counts[i]    # how many, read from the Arrow column without touching the bytes
    data.describe()         # source, split, rows, fingerprint: what results.json records

Loading (local or hub) and its errors come from nanovlm.data.sources, as for training data: a local
source is a parquet file, a folder of parquet files, or a `save_to_disk` folder (a DatasetDict uses
the task's split when it has it, or its only split). What is here is the benchmarks' own: the
task's columns, lazy images per row, --limit and the record of what was evaluated.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from nanovlm.data.sources import DataSourceError, load_source, require_columns, undecoded_images


# the benchmarks' name for the library's data errors; evals.cli and during_training catch it
DataError = DataSourceError


def _image_counts(ds: Any, columns: Sequence[str]) -> list[int]:
    """Images per row, from Arrow lengths and nulls (no image bytes are copied or decoded)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    counts = [0] * len(ds)
    if not columns:
        return counts
    start = 0
    for batch in ds.select_columns(list(columns)).with_format("arrow").iter(batch_size=4096):
        n = batch.num_rows
        for column in columns:
            array = batch.column(column)
            if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
                lengths = pc.fill_null(pc.list_value_length(array), 0).to_pylist()
            else:
                lengths = [int(v) for v in pc.is_valid(array).to_pylist()]
            for i, k in enumerate(lengths):
                counts[start + i] += k
        start += n
    return counts


class RowImages:
    """`images[i]`: the encoded images of row i, as a list. Picklable, for DataLoader workers."""

    def __init__(self, ds: Any, columns: Sequence[str]):
        self.ds = ds.select_columns(list(columns)) if columns else None
        self.columns = list(columns)

    def __len__(self) -> int:
        return 0 if self.ds is None else len(self.ds)

    def __getitem__(self, i: int) -> list[Any]:
        if self.ds is None:
            return []
        row = self.ds[int(i)]
        out: list[Any] = []
        for column in self.columns:
            value = row[column]
            if value is None:
                continue
            out.extend(value if isinstance(value, list) else [value])
        return out


@dataclass
class EvalData:
    source: str
    split: str
    config: str | None
    rows: list[dict[str, Any]]
    images: RowImages
    image_counts: list[int]
    fingerprint: str
    total_rows: int  # before --limit
    file_hashes: dict[str, str] = field(default_factory=dict)
    revision: str | None = None  # the hub dataset's commit asked for (None: the default branch, or local data)

    def __len__(self) -> int:
        return len(self.rows)

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "config": self.config, "split": self.split, "rows": len(self.rows),
                "total_rows": self.total_rows, "fingerprint": self.fingerprint, "sha256": self.file_hashes,
                "revision": self.revision}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _local_files(path: str) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".parquet", ".arrow"))


def load_eval_data(source: str, *, split: str, columns: Sequence[str], image_columns: Sequence[str] = ("image",),
                   config: str | None = None, limit: int | None = None, task: str = "benchmark",
                   schema_hint: str = "", revision: str | None = None) -> EvalData:
    """Load, check the columns (a missing one is an error naming it), keep images encoded.
    `revision` (a hub dataset's commit, branch or tag) applies to hub sources only."""
    path = os.path.expanduser(source)
    local = os.path.exists(path)
    ds = load_source(source, split=split, configs=[config], revision=revision, flag="--data")
    require_columns(ds.column_names, list(dict.fromkeys([*columns, *image_columns])), f"{task} data {source!r}",
                    f"{schema_hint or 'Convert it to the task schema'} (or pass --data with such a copy)")
    total, fingerprint = len(ds), ds._fingerprint  # of the whole split, as loaded
    if limit is not None and limit < total:
        ds = ds.select(range(limit))
    ds = undecoded_images(ds, image_columns)
    text_columns = [c for c in ds.column_names if c not in image_columns]
    rows = ds.select_columns(text_columns).to_list()
    hashes = {f.name: _sha256(f) for f in _local_files(path)} if local else {}
    return EvalData(source=str(Path(path).resolve()) if local else source, split=split, config=config, rows=rows,
                    images=RowImages(ds, image_columns), image_counts=_image_counts(ds, image_columns),
                    fingerprint=fingerprint, total_rows=total, file_hashes=hashes,
                    revision=None if local else revision)

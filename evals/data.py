"""Benchmark data: a hub dataset or a local copy, checked against the task's schema, images left
encoded so that DataLoader workers decode them (and a corrupt one fails only its item).

    data = load_eval_data("Lin-Chen/MMStar", split="val", columns=["question", ...], image_columns=["image"])
    data = load_eval_data("/data/mmstar.parquet", split="val", ...)        # or a folder, or save_to_disk
    data.rows[i]            # the text columns of row i (a dict)
    data.images[i]          # the encoded images of row i (a list), read lazily
    data.image_counts[i]    # how many, read from the Arrow column without touching the bytes
    data.describe()         # source, split, rows, fingerprint: what results.json records

A local source is a parquet file, a folder of parquet files, or a `save_to_disk` folder (a
DatasetDict uses the task's split when it has it, or its only split).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


class DataError(ValueError):
    """The data cannot be used for the task (missing columns, split, file): the message says why."""


def _local(path: str, split: str) -> Any:
    import datasets

    p = Path(path)
    if p.is_dir() and any((p / f).exists() for f in ("state.json", "dataset_dict.json")):
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if split in ds:
                return ds[split]
            if len(ds) == 1:
                return next(iter(ds.values()))
            raise DataError(f"{path} holds splits {list(ds)}, not {split!r}: pass the folder of one split")
        return ds
    if p.is_file() and p.suffix == ".parquet":
        files: Any = str(p)
    elif p.is_dir():
        found = sorted(str(f) for f in p.rglob("*.parquet"))
        if not found:
            raise DataError(f"no parquet files under {path}")
        # a split-named subset of the files, if the folder holds several splits
        in_split = [f for f in found if f"/{split}" in f[len(str(p)):] or Path(f).name.startswith(split)]
        files = in_split or found
    else:
        raise DataError(f"data path {path!r}: expected a .parquet file, a folder of parquet files or a "
                        f"save_to_disk folder")
    return datasets.load_dataset("parquet", data_files=files, split="train")


def _hub(name: str, config: str | None, split: str, revision: str | None = None) -> Any:
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split, revision=revision)
    except (OSError, ValueError) as err:  # offline, unknown repo or split: datasets raises these
        first = str(err).splitlines()[0] if str(err) else ""
        at = f", revision {revision}" if revision else ""
        raise DataError(f"could not load {name!r} (config {config}, split {split!r}{at}) from the Hugging Face hub "
                        f"({type(err).__name__}: {first}). Offline? Pass --data with a local copy (a parquet file "
                        f"or folder, or a save_to_disk folder)") from err


def _undecoded(ds: Any, image_columns: Sequence[str]) -> Any:
    """Image columns as {"bytes", "path"} dicts: decoding happens in our workers, per item."""
    import datasets

    for column in image_columns:
        feature = ds.features.get(column)
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(column, datasets.Image(decode=False))
        elif isinstance(feature, (datasets.List, datasets.Sequence)) and isinstance(feature.feature, datasets.Image):
            ds = ds.cast_column(column, datasets.List(datasets.Image(decode=False)))
    return ds


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
    local = os.path.exists(source)
    ds = _local(source, split) if local else _hub(source, config, split, revision)
    needed = list(dict.fromkeys([*columns, *image_columns]))
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise DataError(f"{task} data {source!r} is missing column(s) {missing}; found {ds.column_names}. "
                        f"{schema_hint or 'Convert it to the task schema'} (or pass --data with such a copy)")
    total, fingerprint = len(ds), ds._fingerprint  # of the whole split, as loaded
    if limit is not None and limit < total:
        ds = ds.select(range(limit))
    ds = _undecoded(ds, image_columns)
    text_columns = [c for c in ds.column_names if c not in image_columns]
    rows = ds.select_columns(text_columns).to_list()
    hashes = {f.name: _sha256(f) for f in _local_files(source)} if local else {}
    return EvalData(source=str(Path(source).resolve()) if local else source, split=split, config=config, rows=rows,
                    images=RowImages(ds, image_columns), image_counts=_image_counts(ds, image_columns),
                    fingerprint=fingerprint, total_rows=total, file_hashes=hashes,
                    revision=None if local else revision)

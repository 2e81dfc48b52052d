"""Where datasets come from: a local copy or the Hugging Face hub, checked, with images left encoded.
Training (nanovlm.data.datasets) and the benchmarks (evals.data) both load through here.

    ds = load_source("HuggingFaceM4/the_cauldron", split="train", configs=["vqav2"], streaming=True)
    ds = load_source("/data/mmstar.parquet", split="val", flag="--data")   # or a folder, or save_to_disk
    require_columns(ds.column_names, ["images", "texts"], "dataset 'x'", "Expected ...")
    ds = undecoded_images(ds, ["images"])        # {"bytes", "path"} dicts, decoded per item by the caller

A local source is a parquet file, a folder of parquet files (the files named after `split`, if some
are) or a `save_to_disk` folder (a DatasetDict gives `split`, or its only split). Every problem is a
DataSourceError: one line naming the problem and the fix (`flag` is the option that names the data).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Sequence

from nanovlm.checks import looks_local
from nanovlm.config import ConfigError

# A streamed save_to_disk folder gets this many shards: a multiple of every world size up to 8, so
# that split_dataset_by_node hands each rank whole shards instead of making every rank read them all.
STREAM_SHARDS = 840


class DataSourceError(ConfigError):
    """The data cannot be used (missing file, rows, columns or split; hub unreachable): the message says why."""


def load_source(source: str, *, split: str = "train", configs: Sequence[str | None] = (None,),
                streaming: bool = False, revision: str | None = None, flag: str = "--dataset") -> Any:
    """A local path (configs and revision do not apply) or a hub dataset, its `configs` concatenated."""
    local = os.path.expanduser(source)
    if os.path.exists(local):
        return load_local(local, split=split, streaming=streaming)
    if looks_local(source):  # a typo in a path, not a hub id: say so instead of blaming the network
        raise DataSourceError(f"no such file or directory: {local} ({flag})")
    import datasets

    parts = [load_hub(source, config=c, split=split, streaming=streaming, revision=revision, flag=flag)
             for c in configs or (None,)]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def load_hub(name: str, *, config: str | None = None, split: str = "train", streaming: bool = False,
             revision: str | None = None, flag: str = "--dataset") -> Any:
    import datasets

    try:
        stream = {"streaming": True} if streaming else {}
        return datasets.load_dataset(name, config or None, split=split, **stream, revision=revision)
    except (OSError, ValueError) as err:  # offline, unknown repo, config or split: datasets raises these
        at = f", revision {revision}" if revision else ""
        raise DataSourceError(f"could not load {name!r} (config {config}, split {split!r}{at}) from the Hugging Face "
                              f"hub ({type(err).__name__}: {first_line(err)}). Offline? Pass {flag} with a local copy "
                              f"(a parquet file or folder, or a save_to_disk folder)") from err


def load_local(path: str, *, split: str = "train", streaming: bool = False) -> Any:
    """A local dataset; an empty one, or files that are not what their names say, are one-line errors."""
    import datasets

    if os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json")):
        ds = _load_saved(path, split)
        return ds.to_iterable_dataset(num_shards=min(len(ds), STREAM_SHARDS)) if streaming else ds
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
        if not found:
            names = sorted(os.listdir(path))
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") if names else "nothing"
            raise DataSourceError(f"dataset folder {path} holds no .parquet files and is not a save_to_disk folder "
                                  f"(found: {shown}): expected a .parquet file, a folder of them or a save_to_disk "
                                  f"folder")
        # the files of this split, if the folder holds several splits
        in_split = [f for f in found if f"/{split}" in f[len(path):] or os.path.basename(f).startswith(split)]
        files = in_split or found
    elif path.endswith(".parquet"):
        files = [path]
    else:
        raise DataSourceError(f"dataset path {path!r}: expected a .parquet file, a folder of parquet files or a "
                              f"save_to_disk folder")
    if parquet_rows(files) == 0:
        raise DataSourceError(f"dataset {path}: 0 rows in {len(files)} parquet file(s)")
    return datasets.load_dataset("parquet", data_files=files, split="train", streaming=streaming)


def _load_saved(path: str, split: str) -> Any:
    """A save_to_disk folder: a Dataset, or `split` (or the only split) of a DatasetDict."""
    import datasets

    if _saved_without_data(path):  # `datasets` itself fails on these with an IndexError
        raise DataSourceError(f"dataset {path}: the save_to_disk folder holds 0 rows")
    try:
        ds = datasets.load_from_disk(path)
    except Exception as err:  # noqa: BLE001 - a broken folder is the user's to fix, whatever `datasets` raises
        raise DataSourceError(f"dataset {path}: not a readable save_to_disk folder ({type(err).__name__}: "
                              f"{first_line(err)})") from err
    if isinstance(ds, datasets.DatasetDict):
        if split in ds:
            ds = ds[split]
        elif len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise DataSourceError(f"{path} holds splits {list(ds)}, not {split!r}: pass the folder of one split")
    if len(ds) == 0:
        raise DataSourceError(f"dataset {path}: the save_to_disk folder holds 0 rows")
    return ds


def _saved_without_data(path: str) -> bool:
    """A save_to_disk folder of an empty Dataset: its state.json lists no data files."""
    try:
        with open(os.path.join(path, "state.json")) as f:
            return json.load(f).get("_data_files") == []
    except (OSError, ValueError, AttributeError):
        return False


def parquet_rows(files: Sequence[str]) -> int:
    """Total rows, read from the files' footers; a file that is not parquet is a one-line error."""
    import pyarrow.parquet as pq

    total = 0
    for name in files:
        try:
            total += pq.ParquetFile(name).metadata.num_rows
        except Exception as err:  # noqa: BLE001 - ArrowInvalid, OSError: the file is not what it claims
            raise DataSourceError(f"{name} is not a readable parquet file ({first_line(err)})") from err
    return total


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def require_columns(found: Sequence[str], needed: Sequence[str], what: str, hint: str) -> None:
    """`what` (e.g. "dataset 'x'") must have every `needed` column; else an error naming the missing ones."""
    missing = [c for c in needed if c not in found]
    if missing:
        raise DataSourceError(f"{what} is missing column(s) {missing}; found {list(found)}. {hint}")


def undecoded_images(ds: Any, columns: Sequence[str]) -> Any:
    """Image columns (an image or a list of them) as {"bytes", "path"} dicts: the caller decodes each
    item itself, so one corrupt image fails that item, not a whole batch or worker."""
    import datasets

    features = ds.features or {}  # a stream of unknown features holds the stored dicts already
    for column in columns:
        feature = features.get(column)
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(column, datasets.Image(decode=False))
        elif isinstance(feature, (datasets.List, datasets.Sequence)) and isinstance(feature.feature, datasets.Image):
            ds = ds.cast_column(column, datasets.List(datasets.Image(decode=False)))
    return ds

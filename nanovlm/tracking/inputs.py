"""Datasets a run read, as MLflow run inputs (the runs table's Dataset column).

    client.log_inputs(run_id, datasets=[dataset_input("synthetic", "3f2a9c1e", "training", data=records)])
    dataset_input("Lin-Chen/MMStar", fp, "eval", rows=100, split="val[:100]")   # a hub dataset, its revision

`dataset.digest = '<fingerprint>'` in the UI's search box finds the runs that read the data. MLflow keeps
one dataset per (experiment, name, digest), and the splits of one source share its fingerprint, so the
name carries the split: `synthetic:training`, `synthetic:validation`, `Lin-Chen/MMStar:val[:100]`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

MAX_DIGEST_LENGTH = 36  # MLflow's limit (a VARCHAR(36) column)
CONTEXT_TAG = "mlflow.data.context"  # the input tag MLflow's UI shows as the dataset's context


def hub_revision(data: Any) -> str | None:
    """The commit of a hub dataset as `datasets` cached it (its cache folder is named by the commit)."""
    for cached in getattr(data, "cache_files", None) or []:
        folder = Path(cached.get("filename", "")).parent.name
        if re.fullmatch(r"[0-9a-f]{40}", folder):
            return folder
    return None


def dataset_input(source: str, digest: str, context: str, *, data: Any = None, rows: int | None = None,
                  subset: str = "", split: str = "", revision: str | None = None) -> Any:
    """An MLflow run input (`DatasetInput`) for data read from `source`: "synthetic", a hub id or a path.

    `data` (the records, a `datasets.Dataset`) supplies the row count and a hub revision when
    they are not given. The dataset is named `<source>:<split or context>`.
    """
    import warnings

    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset, DatasetInput, InputTag

    if rows is None and data is not None and hasattr(data, "__len__"):
        rows = len(data)
    profile: dict[str, Any] = {"num_rows": rows} if rows is not None else {}
    if source == "synthetic":
        origin = CodeDatasetSource({"generator": "nanovlm.data.synthetic"})
    elif os.path.exists(source):
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local source
            warnings.simplefilter("ignore")
            origin = resolve_dataset_source(Path(source).resolve().as_uri())
    else:
        revision = revision or hub_revision(data)
        origin = HuggingFaceDatasetSource(source, config_name=subset or None, split=split or None, revision=revision)
        if revision:
            profile["revision"] = revision
    if len(digest) > MAX_DIGEST_LENGTH:  # a stream's fingerprint names the stream: shortened, kept in the profile
        profile["fingerprint"] = digest
        digest = hashlib.sha256(digest.encode()).hexdigest()[:16]
    # MetaDataset has no profile of its own: its fields, plus ours, make the stored entity.
    fields = MetaDataset(origin, name=f"{source}:{split or context}", digest=digest).to_dict()
    dataset = Dataset(**fields, profile=json.dumps(profile) if profile else None)
    return DatasetInput(dataset, tags=[InputTag(CONTEXT_TAG, context)])

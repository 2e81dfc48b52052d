"""Register a run's checkpoint in the MLflow Model Registry, and load a registered version back.

    python -m experiments.run tiny --register nanovlm-tiny                  # best checkpoint -> a new version
    python -m experiments.run tiny --register nanovlm-tiny --alias champion
    python -m sweeps.lr --preset tiny --n_trials 4 --register nanovlm-tiny  # the sweep's best trial
    python -m experiments.register RUN_ID nanovlm-tiny [--alias champion]   # any finished run, afterwards

    from experiments.register import load_registered
    model = load_registered("nanovlm-tiny", "champion")     # or a version number: load_registered(name, 3)

What a version is: the run's best checkpoint (`checkpoints/best`), else its final one. When the runner
logged that checkpoint as an artifact (models under 200 MB), the version's source is the run's artifact
folder (`.../artifacts/checkpoints/best`); otherwise the local checkpoint directory (file:// URI), which
must stay where it is. Version tags: `run_id`, `checkpoint` (best/final), `step`, `best_metric` and
`best_metric_value` (from the checkpoint's meta.json), `dataset`, `dataset_fingerprint`, `preset`,
`checkpoint_path`, and the run's last `eval/*` and `val/*` metrics under their own names. The alias
defaults to `candidate` (MLflow reserves `latest` and `v<N>`). Registering the same run's same
checkpoint again reuses its version (a resumed sweep or a second worker adds no duplicate).

The registry needs a database-backed store: the project's default `sqlite:///<cwd>/mlflow.db` is one.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from nanovlm.config import ConfigError

log = logging.getLogger("nanovlm.register")

DEFAULT_ALIAS = "candidate"
ARTIFACT_PATHS = {"best": "checkpoints/best", "final": "checkpoints/final"}  # as experiments/runner.py logs them
METRIC_PREFIXES = ("eval/", "val/")
_ALIAS = re.compile(r"^[\w-]{1,255}$")


class RegisterError(ConfigError):
    """A registration that cannot be done as asked (bad name or alias, no checkpoint, file store)."""


@dataclass
class Registered:
    name: str
    version: str
    alias: str
    source: str
    run_id: str
    checkpoint: str  # "best" or "final"
    reused: bool = False  # the version existed already (same run, same checkpoint)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"

    def summary(self) -> str:
        verb = "is" if self.reused else "registered as"
        return f"{self.checkpoint} checkpoint of run {self.run_id} {verb} {self.name} version {self.version} " \
               f"(alias {self.alias}: {self.uri}); source {self.source}"


def check_name(name: str) -> str:
    if not name or not name.strip() or any(c in name for c in "/@:") or name != name.strip():
        raise RegisterError(f"--register {name!r}: a registered model name must be non-empty, without "
                            f"surrounding spaces or the characters / @ :")
    return name


def check_alias(alias: str) -> str:
    """MLflow's rules: letters, digits, _ and -; `latest` and `v<N>` are reserved."""
    if not _ALIAS.match(alias or ""):
        raise RegisterError(f"--alias {alias!r}: use letters, digits, _ and - only")
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise RegisterError(f"--alias {alias!r} is reserved by MLflow (latest, v<N>); try {DEFAULT_ALIAS} or champion")
    return alias


def model_uri(name: str, alias_or_version: str | int) -> str:
    """`models:/NAME/3` for a version number, `models:/NAME@alias` for an alias."""
    text = str(alias_or_version)
    return f"models:/{name}/{text}" if text.isdigit() else f"models:/{name}@{text}"


def _client(tracking_uri: str | None) -> tuple[Any, str]:
    from mlflow import MlflowClient

    from nanovlm.tracking import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    if not (uri.startswith(("sqlite:", "postgresql", "mysql", "mssql", "http:", "https:", "databricks"))):
        raise RegisterError(f"the MLflow Model Registry needs a database-backed store (sqlite:///..., "
                            f"postgresql://..., or an `mlflow server`), not {uri}")
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def _artifact_checkpoint(client: Any, run_id: str, artifact_path: str, local: Path | None) -> bool:
    """Whether the run holds this checkpoint as artifacts (and, when it is known, the same weights file size)."""
    try:
        files = {Path(f.path).name: f for f in client.list_artifacts(run_id, artifact_path)}
    except Exception as e:  # noqa: BLE001 - an unreachable artifact store: register the local path instead
        log.warning("could not list the artifacts of run %s (%s): registering the local checkpoint", run_id, e)
        return False
    if "config.json" not in files or "model.safetensors" not in files:
        return False
    if local is not None and (local / "model.safetensors").is_file():
        if files["model.safetensors"].file_size not in (None, (local / "model.safetensors").stat().st_size):
            return False
        if (local / "meta.json").is_file() and "meta.json" in files:  # the same step, not just the same shapes
            logged = _meta(client, run_id, artifact_path, None)
            return logged.get("step") == json.loads((local / "meta.json").read_text()).get("step")
    return True


def _meta(client: Any, run_id: str, artifact_path: str | None, local: Path | None) -> dict[str, Any]:
    if local is not None and (local / "meta.json").is_file():
        return json.loads((local / "meta.json").read_text())
    if artifact_path is not None:
        import mlflow.artifacts

        try:
            return json.loads(mlflow.artifacts.load_text(
                client.get_run(run_id).info.artifact_uri.rstrip("/") + f"/{artifact_path}/meta.json"))
        except Exception:  # noqa: BLE001 - a checkpoint without meta.json still registers
            return {}
    return {}


def _locate(client: Any, run: Any, checkpoint: Path | None, kind: str | None) -> tuple[str, Path | None, str | None]:
    """(kind, local directory or None, artifact path or None) of the checkpoint to register."""
    run_id = run.info.run_id
    if checkpoint is not None:
        kind = kind or ("best" if checkpoint.name == "best" else "final")
        local = checkpoint if (checkpoint / "model.safetensors").is_file() else None
        logged = ARTIFACT_PATHS[kind] if _artifact_checkpoint(client, run_id, ARTIFACT_PATHS[kind], local) else None
        if local is None and logged is None:
            raise RegisterError(f"{checkpoint} is not a checkpoint directory and run {run_id} did not log it")
        return kind, local, logged
    tags = run.data.tags
    for kind in ("best", "final"):  # the best checkpoint first, as the run recorded it (tags + artifacts)
        path = tags.get("best_checkpoint" if kind == "best" else "checkpoint")
        local = Path(path) if path and (Path(path) / "model.safetensors").is_file() else None
        if _artifact_checkpoint(client, run_id, ARTIFACT_PATHS[kind], local):
            return kind, local, ARTIFACT_PATHS[kind]
        if local is not None:
            return kind, local, None
    raise RegisterError(f"run {run_id} has no checkpoint to register: neither logged artifacts "
                        f"({', '.join(ARTIFACT_PATHS.values())}) nor a checkpoint directory on this machine")


def register_run(name: str, run_id: str, *, checkpoint: str | Path | None = None, alias: str = DEFAULT_ALIAS,
                 tracking_uri: str | None = None, description: str | None = None,
                 extra_tags: dict[str, Any] | None = None) -> Registered:
    """Register a finished run's checkpoint (`checkpoint`, else its best, else its final one) as a new
    version of `name` (created when missing), with lineage and metric tags, and point `alias` at it."""
    from mlflow.exceptions import MlflowException

    check_name(name)
    check_alias(alias)
    client, uri = _client(tracking_uri)
    run = client.get_run(run_id)
    kind, local, artifact_path = _locate(client, run, Path(checkpoint) if checkpoint is not None else None, None)
    meta = _meta(client, run_id, artifact_path, local)
    if artifact_path is not None:  # the run's own artifact folder, as an address the registry can copy from
        source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"  # = runs:/<run_id>/<artifact_path>
    else:
        source = local.resolve().as_uri()

    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith(METRIC_PREFIXES)}
    best_metric = meta.get("best_metric") or ("val/loss" if kind == "best" else "")
    best_value = meta.get(best_metric) if best_metric else None
    if best_value is None and best_metric == "val/loss":
        best_value = run.data.metrics.get("val/best_loss")
    tags: dict[str, Any] = {
        "run_id": run_id, "checkpoint": kind, "step": meta.get("step", ""), "best_metric": best_metric,
        "best_metric_value": "" if best_value is None else best_value,
        "dataset": run.data.tags.get("dataset", ""),
        "dataset_fingerprint": run.data.tags.get("dataset_fingerprint", ""),
        "preset": run.data.tags.get("preset", ""), "run_name": run.info.run_name or "",
        "checkpoint_path": str(local.resolve()) if local is not None else "",
        **metrics, **(extra_tags or {})}
    tags = {k: str(v) for k, v in tags.items() if v != ""}

    existing = _existing_version(client, name, run_id, kind, tags.get("step"))
    if existing is not None:
        client.set_registered_model_alias(name, alias, existing.version)
        log.info("run %s's %s checkpoint is %s version %s already: alias %s set", run_id, kind, name,
                 existing.version, alias)
        return Registered(name, str(existing.version), alias, existing.source, run_id, kind, reused=True)

    try:
        client.create_registered_model(name, description="nanoVLM checkpoints registered by nanovlm-lab "
                                                          "(experiments/register.py)")
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    shown = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(metrics.items()))
    text = description or (
        f"{kind} checkpoint (step {meta.get('step', '?')}) of run {run.info.run_name or run_id} ({run_id}), "
        f"preset {run.data.tags.get('preset', '?')}, trained on {run.data.tags.get('dataset', '?')} "
        f"(fingerprint {run.data.tags.get('dataset_fingerprint', '?')}). "
        + (f"Kept by {best_metric} = {best_value}. " if best_metric and best_value is not None else "")
        + (f"Metrics: {shown}. " if shown else "")
        + ("Weights are the run's artifacts." if artifact_path else f"Weights stay at {local.resolve()} "
           "(too large to log as artifacts): keep that folder.")
        + " Load: experiments.register.load_registered(name, alias_or_version).")
    version = client.create_model_version(name, source, run_id=run_id, tags=tags, description=text)
    client.set_registered_model_alias(name, alias, version.version)
    log.info("registered %s version %s (alias %s) from run %s's %s checkpoint: %s", name, version.version, alias,
             run_id, kind, source)
    return Registered(name, str(version.version), alias, source, run_id, kind)


def _existing_version(client: Any, name: str, run_id: str, kind: str, step: str | None) -> Any:
    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except Exception:  # noqa: BLE001 - the model does not exist yet (some stores raise)
        return None
    for v in versions:
        if v.tags.get("checkpoint") == kind and v.tags.get("step") == step:
            return v
    return None


def register_result(result: Any, name: str, *, alias: str = DEFAULT_ALIAS, tracking_uri: str | None = None,
                    extra_tags: dict[str, Any] | None = None) -> Registered:
    """Register a RunResult's best checkpoint, else its final one."""
    if not result.run_id:
        raise RegisterError("the run has no MLflow run id (not the main process?): nothing to register")
    checkpoint = result.best_checkpoint or result.checkpoint
    return register_run(name, result.run_id, checkpoint=checkpoint, alias=alias, tracking_uri=tracking_uri,
                        extra_tags=extra_tags)


def download_registered(name: str, alias_or_version: str | int, dst_path: str | Path,
                        tracking_uri: str | None = None) -> Path:
    """Download a registered version's checkpoint folder into `dst_path`; returns the folder.

    `models:/NAME@alias` is resolved by MLflow against the process's registry URI only
    (`mlflow.get_registry_uri()`), so for another store the version is looked up with a client of
    `tracking_uri` first and its download URI fetched instead."""
    import mlflow
    import mlflow.artifacts

    client, uri = _client(tracking_uri)
    artifact_uri = model_uri(name, alias_or_version)
    if mlflow.get_registry_uri() != uri:
        text = str(alias_or_version)
        version = text if text.isdigit() else client.get_model_version_by_alias(name, text).version
        artifact_uri = client.get_model_version_download_uri(name, str(version))
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst_path),
                                                    tracking_uri=uri))


def load_registered(name: str, alias_or_version: str | int, tracking_uri: str | None = None,
                    device: str = "cpu") -> Any:
    """`models:/NAME@alias` (or `models:/NAME/<version>`) -> a VisionLanguageModel."""
    from nanovlm.model.vlm import VisionLanguageModel

    with tempfile.TemporaryDirectory(prefix="nanovlm-registered-") as tmp:
        path = download_registered(name, alias_or_version, tmp, tracking_uri)
        return VisionLanguageModel.from_pretrained(path, device=device)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.register", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("run_id", help="a finished MLflow run of experiments.run")
    parser.add_argument("name", help="the registered model's name")
    parser.add_argument("--alias", default=DEFAULT_ALIAS, help=f"alias for the new version (default {DEFAULT_ALIAS})")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint directory of that run (default: its best)")
    parser.add_argument("--tracking_uri", "--tracking-uri", default=None, help="MLflow store (default: the project's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from mlflow.exceptions import MlflowException

    try:
        registered = register_run(args.name, args.run_id, checkpoint=args.checkpoint, alias=args.alias,
                                  tracking_uri=args.tracking_uri)
    except (RegisterError, MlflowException) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(registered.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())

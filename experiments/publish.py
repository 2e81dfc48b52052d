"""Publish a checkpoint (or its SmolVLM export) to the Hugging Face hub with a generated model card.

    python -m experiments.publish runs/tiny/checkpoints/best me/nanovlm-tiny --export smolvlm --private
    python -m experiments.publish CKPT me/repo --revision v1 --tracking_uri sqlite:///$PWD/mlflow.db
    python -m experiments.publish CKPT me/repo --export smolvlm --dry_run   # staged folder + card, no upload
    python -m experiments.publish CKPT me/repo --register nanovlm-tiny --alias production   # + a registry version

The card (README.md) comes from the checkpoint's meta.json (the MLflow run id) and that run's params,
metrics (incl. eval/<task>/<score> and their _stderr) and tags; see nanovlm/export/card.py. The folder
uploaded is the checkpoint's model files (training state left out) or, with --export, the export.
Uses `HfApi().create_repo(...)` and `upload_folder(...)` (log in with `hf auth login` or HF_TOKEN).
Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from nanovlm.export.card import model_card, run_record
from nanovlm.export import FORMATS, UnsupportedExport, check_exportable, export_checkpoint

# The model files of a checkpoint directory; optimizer / RNG / trainer state stay behind.
MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "processor_config.json", "meta.json",
               "generation_config.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
               "vocab.json", "merges.txt", "added_tokens.json")


class PublishError(ValueError):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.publish", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("checkpoint", help="a checkpoint directory (VisionLanguageModel.save_pretrained layout)")
    parser.add_argument("repo_id", help="the hub repository, owner/name")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", default=None, help="branch to upload to (created if missing)")
    parser.add_argument("--export", default=None, metavar="FORMAT",
                        help=f"upload the export in this format ({', '.join(FORMATS)}) instead of the checkpoint")
    parser.add_argument("--tracking_uri", "--tracking-uri", default=None,
                        help="MLflow store of the training run (default: nanovlm.tracking.default_tracking_uri())")
    parser.add_argument("--license", default="apache-2.0", help="the card's license field")
    parser.add_argument("--register", default=None, metavar="NAME",
                        help="after the upload, register the checkpoint as a version of this MLflow registered model "
                             "(tagged with the hub repo; see experiments/register.py)")
    parser.add_argument("--alias", default=None, help="with --register: the version's alias (default: candidate)")
    parser.add_argument("--dry_run", "--dry-run", metavar="DIR", nargs="?", const="", default=None,
                        help="stage the folder (into DIR if given) and print the card; upload nothing")
    return parser


def stage(checkpoint: Path, directory: Path, export: str | None) -> Path:
    """The folder to upload: the checkpoint's model files, or the export, written into `directory`."""
    if export:
        return export_checkpoint(checkpoint, directory / "model", export)
    target = directory / "model"
    target.mkdir(parents=True)
    for name in MODEL_FILES:
        if (checkpoint / name).is_file():
            shutil.copy(checkpoint / name, target / name)
    return target


def write_card(folder: Path, checkpoint: Path, repo_id: str, export: str | None, tracking_uri: str,
               license: str) -> str:
    record = run_record(checkpoint, tracking_uri)
    text = model_card(folder, record, repo_id, export, license=license, harness=_harness(),
                      preset_defaults=_preset_defaults(record.params.get("preset") or record.tags.get("preset")))
    (folder / "README.md").write_text(text)
    return text


def upload(folder: Path, repo_id: str, private: bool, revision: str | None, api: Any = None) -> str:
    """create_repo + (create_branch) + upload_folder; returns the commit URL."""
    from huggingface_hub import HfApi

    api = api or HfApi()
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id=repo_id, branch=revision, repo_type="model", exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                             commit_message=f"Upload {folder.name} with nanovlm-lab")
    return str(getattr(info, "commit_url", info))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    checkpoint = Path(args.checkpoint)
    try:
        _check_args(args, checkpoint)
        from nanovlm.tracking import default_tracking_uri

        tracking_uri = args.tracking_uri or default_tracking_uri()
        with tempfile.TemporaryDirectory(prefix="publish-") as tmp:
            staging = Path(args.dry_run) if args.dry_run else Path(tmp)
            folder = stage(checkpoint, staging, args.export)
            card = write_card(folder, checkpoint, args.repo_id, args.export, tracking_uri, args.license)
            if args.dry_run is not None:
                print(card)
                print(f"staged {sorted(p.name for p in folder.iterdir())} in {folder}; nothing uploaded (--dry_run)")
                return 0
            url = upload(folder, args.repo_id, args.private, args.revision)
    except (PublishError, UnsupportedExport, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"published {checkpoint} to https://huggingface.co/{args.repo_id}: {url}")
    if args.register:
        return _register(args, checkpoint, tracking_uri, url)
    return 0


def _register(args: argparse.Namespace, checkpoint: Path, tracking_uri: str, url: str) -> int:
    import json

    from mlflow.exceptions import MlflowException

    from experiments.register import DEFAULT_ALIAS, RegisterError, register_run

    try:
        run_id = json.loads((checkpoint / "meta.json").read_text())["run_id"]
        registered = register_run(args.register, run_id, checkpoint=checkpoint, alias=args.alias or DEFAULT_ALIAS,
                                  tracking_uri=tracking_uri,
                                  extra_tags={"hf_repo": args.repo_id, "hf_revision": args.revision or "main",
                                              "hf_commit": url})
    except (RegisterError, MlflowException, OSError, KeyError) as err:
        print(f"error: published, but registering failed: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(registered.summary())
    return 0


def _check_args(args: argparse.Namespace, checkpoint: Path) -> None:
    if args.repo_id.count("/") != 1 or not all(args.repo_id.split("/")):
        raise PublishError(f"repo_id must be owner/name, got {args.repo_id!r}")
    if not (checkpoint / "config.json").is_file() or not (checkpoint / "model.safetensors").is_file():
        raise PublishError(f"{checkpoint} is not a checkpoint directory (config.json + model.safetensors)")
    if args.alias and not args.register:
        raise PublishError("--alias names the version --register NAME creates: add --register NAME")
    if args.register:
        from experiments.register import DEFAULT_ALIAS, RegisterError, check_alias, check_name

        try:
            check_name(args.register)
            check_alias(args.alias or DEFAULT_ALIAS)
        except RegisterError as err:
            raise PublishError(str(err)) from None
        meta = checkpoint / "meta.json"
        if not meta.is_file() or '"run_id"' not in meta.read_text():
            raise PublishError(f"--register: {checkpoint} has no meta.json with the MLflow run id")
    if args.export:
        check_exportable(checkpoint, args.export)  # before anything is written or created
    if args.dry_run and Path(args.dry_run).exists() and any(Path(args.dry_run).iterdir()):
        raise PublishError(f"--dry_run directory {args.dry_run} is not empty")


def _harness() -> dict[str, str] | None:
    try:
        from evals.harness import harness_info

        return harness_info()
    except Exception:  # noqa: BLE001 - the card then says "not recorded"
        return None


def _preset_defaults(preset: str | None) -> dict[str, str] | None:
    if not preset:
        return None
    try:
        from experiments.presets import get_preset
        from nanovlm.config import flatten

        return {k: str(v) for k, v in flatten(get_preset(preset)).items()}
    except Exception:  # noqa: BLE001 - an unknown preset: every recorded value is spelled out
        return None


if __name__ == "__main__":
    sys.exit(main())

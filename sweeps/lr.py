"""Sweep learning rates and freezing with Optuna; every trial is an MLflow run nested under the sweep's run.

    python -m sweeps.lr --preset tiny --n_trials 4 --max_steps 8 --validation_steps 2   # minutes on CPU
    python -m sweeps.lr --preset dinov3_gemma --n_trials 30 --separate_lrs --space lr_projector=1e-4:1e-2
    python -m sweeps.lr --preset tiny --metric eval/synthetic/overall        # maximise accuracy (no pruning)
    python -m sweeps.lr --preset tiny --freeze_vision_encoder                # a runner flag fixes a searched value
    python -m sweeps.lr --preset tiny --study_name s1 --storage postgresql://user@db:5432/optuna  # one worker of many
    python -m sweeps.lr --preset tiny --n_trials 4 --dry_run                 # the resolved plan; no store, no trial
    python -m sweeps.lr --preset tiny --n_trials 4 --register nanovlm-tiny   # best trial -> MLflow Model Registry

Search space (`--space NAME=SPEC`, repeatable; see sweeps/space.py): lr_projector log-uniform 1e-4..1e-1,
lr_backbones log-uniform 1e-6..1e-3, freeze_vision_encoder true/false; `--separate_lrs` searches
lr_vision and lr_language instead of lr_backbones. SPEC is LOW:HIGH, A,B,..., VALUE or off.

--n_trials is the study's total of finished trials, shared by all workers: rerunning the same
command resumes the sweep (the default study name is derived from the preset and runner flags).
Every runner flag works (--max_steps, --batch_size, --set section.field=value, ...).
Design notes: sweeps/study.py and the modules it lists.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

from experiments.cli import add_config_flags, config_from_args, parse
from experiments.presets import PRESETS
from nanovlm import metrics as metric_names
from nanovlm.backbones import BackboneUnavailable
from nanovlm.config import ConfigError, field_index, parse_assignments
from sweeps import space as search_space
from sweeps.storage import StorageError
from sweeps.objective import user_error_message
from sweeps.settings import PRUNERS, SAMPLERS, SweepError, SweepSettings
from sweeps.study import run_sweep

log = logging.getLogger("sweeps")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweeps.lr", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("sweep")
    g.add_argument("--preset", default="default", help=f"base experiment, one of: {', '.join(PRESETS)}")
    g.add_argument("--n_trials", "--n-trials", type=int, default=20,
                   help="finished trials (complete or pruned) the study should have, over all workers")
    g.add_argument("--timeout", type=float, default=None, help="seconds after which this worker starts no new trial")
    g.add_argument("--study_name", "--study-name", default="",
                   help="Optuna study (and MLflow parent run) name; default: lr-<preset>-<changed flags>")
    g.add_argument("--storage", default="", help="Optuna RDB storage URL (sqlite:////abs/optuna.db, "
                   "postgresql://user:pw@host:5432/optuna); default: optuna.db beside MLflow's sqlite store")
    g.add_argument("--tracking_uri", "--tracking-uri", default="",
                   help="MLflow store; default $MLFLOW_TRACKING_URI or sqlite:///<cwd or $NANOVLM_HOME>/mlflow.db")
    g.add_argument("--metric", default=metric_names.VAL_LOSS, help="what to optimise: val/loss, val/best_loss, train/loss, "
                   "eval/synthetic/<type> ... (checked before any trial)")
    g.add_argument("--direction", choices=("minimize", "maximize"), default="",
                   help="default: minimize for losses, maximize for eval/ accuracies")
    g.add_argument("--space", action="append", default=[], metavar="NAME=SPEC",
                   help=f"search-space change: NAME=LOW:HIGH, NAME=A,B, NAME=VALUE or NAME=off; NAME is one of "
                        f"{', '.join(search_space.SEARCHABLE)}")
    g.add_argument("--separate_lrs", "--separate-lrs", action="store_true",
                   help="search lr_vision and lr_language (each 1e-6..1e-3) instead of lr_backbones")
    g.add_argument("--enqueue", action="append", default=[], metavar="NAME=V,NAME=V",
                   help="a trial to run first, e.g. lr_projector=0.01,lr_backbones=1e-4,freeze_vision_encoder=false "
                        "(repeatable; a new study only)")
    g.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="TPE (default), random, or grid")
    g.add_argument("--sampler_seed", "--sampler-seed", type=int, default=0,
                   help="sampler seed; each trial draws from (seed, trial number)")
    g.add_argument("--grid_points", "--grid-points", type=int, default=3, help="grid values per range (--sampler grid)")
    g.add_argument("--pruner", choices=PRUNERS, default="auto",
                   help="auto = median when --metric is a validation loss, else none")
    g.add_argument("--prune_startup_trials", "--prune-startup-trials", type=int, default=2,
                   help="median pruner: trials that must finish before any is pruned")
    g.add_argument("--prune_warmup_steps", "--prune-warmup-steps", type=int, default=0,
                   help="median pruner: steps of each trial that are never pruned")
    g.add_argument("--heartbeat_interval", "--heartbeat-interval", type=int, default=30,
                   help="seconds between a running trial's heartbeats")
    g.add_argument("--grace_period", "--grace-period", type=int, default=120,
                   help="a trial without a heartbeat for this long (its worker died) is failed and retried")
    g.add_argument("--max_retry", "--max-retry", type=int, default=3, help="retries of a dead worker's trial")
    g.add_argument("--register", default="", metavar="NAME",
                   help="at the end, register the best trial's checkpoint as a version of this MLflow registered "
                        "model (see experiments/register.py)")
    g.add_argument("--alias", default="", metavar="ALIAS",
                   help="with --register: the version's alias (default: candidate)")
    g.add_argument("--dry_run", "--dry-run", action="store_true", help="print the resolved sweep and exit")
    g.add_argument("--debug", action="store_true", help="show the traceback of an error instead of its one-line message")
    add_config_flags(parser)
    return parser


def _set_by_flags(args: argparse.Namespace) -> set[str]:
    """Short names of the config fields the command line sets (flags and --set)."""
    index = field_index()
    dotted = {k.split(":", 1)[1] for k in vars(args) if k.startswith("cfg:")}
    dotted |= {index.get(key, "") for key in parse_assignments(args.set)}
    return {d.split(".")[-1] for d in dotted if d}


def settings_from_args(args: argparse.Namespace) -> SweepSettings:
    base = config_from_args(args, args.preset)
    if base.run_name:
        raise SweepError("--run_name: each trial is named <study>-trial-NNNN; name the sweep with --study_name")
    space, fixed = search_space.apply_specs(search_space.default_space(args.separate_lrs), args.space)
    explicit = {search_space.parse_spec(spec)[0] for spec in args.space}
    for name in sorted(_set_by_flags(args) & set(search_space.SEARCHABLE)):
        if name in explicit:
            raise SweepError(f"{name} is given both by --space and by --{name}/--set: keep one")
        if name in space:  # a runner flag for a searched parameter fixes it
            log.info("%s fixed at %s by the command line: not searched", name, getattr(base.train, name))
            del space[name]
    enqueue = [search_space.parse_params(text) for text in args.enqueue]
    return SweepSettings(
        base=base, space=space, fixed=fixed, n_trials=args.n_trials, timeout=args.timeout, study_name=args.study_name,
        storage=args.storage, tracking_uri=args.tracking_uri, metric=args.metric, direction=args.direction,
        sampler=args.sampler, sampler_seed=args.sampler_seed, grid_points=args.grid_points, pruner=args.pruner,
        prune_startup_trials=args.prune_startup_trials, prune_warmup_steps=args.prune_warmup_steps,
        heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period, max_retry=args.max_retry,
        enqueue=enqueue, register=args.register, register_alias=args.alias).resolve()


def _print_plan(settings: SweepSettings) -> None:
    rows: dict[str, Any] = {"trials wanted": settings.target(), "MLflow": settings.tracking_uri,
                            **settings.description()}
    for key, value in rows.items():
        print(f"  {key:<30} {value}")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    parser = build_parser()
    args = parse(parser, argv)
    try:
        settings = settings_from_args(args)
        if args.dry_run:
            print("sweep plan (nothing run; --dry_run):")
            _print_plan(settings)
            return 0
        run_sweep(settings)
    except (SweepError, search_space.SpaceError, StorageError, ConfigError, BackboneUnavailable) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a trial's user error (data, store, disk) stops the sweep with its one line
        message = user_error_message(err)
        if message is None or args.debug:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the running trial is marked failed; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

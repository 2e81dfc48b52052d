"""Train a preset or any encoder x LM combination, tracked in MLflow.

    python -m experiments.run tiny                                   # offline, minutes on CPU
    python -m experiments.run original_small --random_init --dry_run # resolved config + parameter counts
    python -m experiments.run dinov3_gemma --freeze_vision_encoder --lr_projector 1e-3
    python -m experiments.run --list                                 # presets and backbones
    python -m experiments.run tiny --register nanovlm-tiny --alias champion   # + an MLflow Model Registry version
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from experiments.cli import add_config_flags, config_from_args, parse
from experiments.presets import PRESETS, describe
from nanovlm import backbones
from nanovlm.checks import check_config, environment_error, user_errors
from nanovlm.config import ConfigError, ExperimentConfig, flatten


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("preset", nargs="?", default="default", help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument("--list", action="store_true", help="list presets and backbones, then exit")
    parser.add_argument("--dry_run", "--dry-run", action="store_true",
                        help="print the resolved config and parameter counts, then exit (no download)")
    parser.add_argument("--json", action="store_true", help="with --dry_run: print JSON")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of its one-line message")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="PATH",
                        help="resume the run: its latest checkpoint, or the checkpoint at PATH")
    parser.add_argument("--register", default=None, metavar="NAME",
                        help="after the run, register its best checkpoint (else the final one) as a new version of "
                             "this MLflow registered model (see experiments/register.py)")
    parser.add_argument("--alias", default=None, metavar="ALIAS",
                        help="with --register: the alias the new version gets (default: candidate; `latest` and "
                             "v<N> are reserved by MLflow)")
    add_config_flags(parser)
    return parser


def dry_run(cfg: ExperimentConfig) -> dict:
    """Resolved configuration, architecture and parameter counts, built on the meta device."""
    from nanovlm.model.vlm import build_vlm
    from nanovlm.optim import apply_freezing

    model = build_vlm(cfg.model, meta=True)
    apply_freezing(model, cfg.train)
    return {"preset": cfg.preset, "config": flatten(cfg), "architecture": model.arch.describe(),
            "parameters": model.parameter_counts()}


def _print_dry_run(info: dict) -> None:
    print(f"preset: {info['preset']}")
    print("config:")
    for key, value in info["config"].items():
        print(f"  {key:<36} {value}")
    print("architecture:")
    for key, value in info["architecture"].items():
        print(f"  {key:<36} {value}")
    print("parameters:")
    for key, value in info["parameters"].items():
        print(f"  {key:<36} {value:>14,}  ({value / 1e6:.2f}M)")


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 done, 2 a mistake in the input or a fault of the machine (one line on stderr:
    `error: ...`; `--debug` shows the traceback instead), 130 interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    parser = build_parser()
    args = parse(parser, argv)
    if args.list:
        print("Presets:\n" + describe() + "\n\n" + backbones.describe())
        return 0
    try:
        if args.json and not args.dry_run:
            raise ConfigError("--json prints the --dry_run report as JSON: add --dry_run, or drop --json to train")
        if args.alias is not None and not args.register:
            raise ConfigError("--alias names the version --register NAME creates: add --register NAME")
        if args.register is not None:  # before anything trains
            from experiments.register import DEFAULT_ALIAS, check_alias, check_name

            check_name(args.register)
            check_alias(args.alias or DEFAULT_ALIAS)
        cfg = config_from_args(args, args.preset)
        check_config(cfg)  # before anything is built or an MLflow run is created
        if args.dry_run:
            info = dry_run(cfg)
            print(json.dumps(info, indent=2, default=str)) if args.json else _print_dry_run(info)
            return 0
        from experiments.runner import run_experiment

        result = run_experiment(cfg, resume=args.resume)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - sorted into the user's mistakes and bugs below
        message = str(err) if isinstance(err, user_errors()) else environment_error(err)
        if message is None or args.debug:
            raise  # a bug: the traceback is what is needed
        print(f"error: {_one_line(message)}", file=sys.stderr)
        return 2
    print(f"run {result.run_id} finished: {result.summary()}")
    _print_synthetic_table(result.metrics)
    if args.register and result.run_id:  # rank 0 only (the other ranks have no MLflow run)
        return _register(result, args.register, args.alias, args.debug)
    return 0


def _register(result, name: str, alias: str | None, debug: bool) -> int:
    from mlflow.exceptions import MlflowException

    from experiments.register import DEFAULT_ALIAS, RegisterError, register_result

    try:
        registered = register_result(result, name, alias=alias or DEFAULT_ALIAS)
    except (RegisterError, MlflowException, OSError) as err:
        if debug:
            raise
        print(f"error: the run finished, but registering it failed: {_one_line(str(err))} (retry with "
              f"`python -m experiments.register {result.run_id} {name}`)", file=sys.stderr)
        return 2
    print(registered.summary())
    return 0


def _one_line(message: str) -> str:
    return " ".join(message.split()) or "(no message)"


def _print_synthetic_table(metrics: dict[str, float]) -> None:
    """Held-out synthetic accuracy with images vs the blind control (images shuffled between questions)."""
    from nanovlm.metrics import eval_name

    kinds = sorted(k.rsplit("/", 1)[1] for k in metrics if k.startswith(eval_name("synthetic", "")))
    if not kinds:
        return
    print(f"\n{'question type':<14} {'with images':>12} {'blind':>8} {'gain':>8}")
    for kind in kinds:
        seen, blind = (100 * metrics[eval_name(task, kind)] for task in ("synthetic", "synthetic_blind"))
        print(f"{kind:<14} {seen:>11.1f}% {blind:>7.1f}% {seen - blind:>+7.1f}")


if __name__ == "__main__":
    sys.exit(main())

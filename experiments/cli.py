"""Command-line flags generated from the config dataclasses: each field is declared once, in config.py.

    parser = argparse.ArgumentParser(); add_config_flags(parser)
    cfg = config_from_args(parser, argv)      # preset + flags + --set overrides

Every config field becomes `--field` (dashes accepted: `--lr-projector`), with its help text and
default, plus its old names from `nanovlm.config.ALIASES` (`--lr_mp`); `--set section.field=value`
reaches any field by its dotted name. Unknown flags are an error that lists close matches.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Sequence

from nanovlm.config import SECTIONS, ExperimentConfig, aliases_of, override, parse_assignments, suggest
from experiments.presets import get_preset

_SKIP = {"preset"}  # chosen by the positional argument


def _config_fields() -> list[tuple[str, dataclasses.Field, Any]]:
    """(dotted name, field, default) for every settable field, in declaration order."""
    cfg = ExperimentConfig()
    out = []
    for f in dataclasses.fields(cfg):
        if f.name in SECTIONS:
            section = getattr(cfg, f.name)
            out += [(f"{f.name}.{g.name}", g, getattr(section, g.name)) for g in dataclasses.fields(section)]
        elif f.name not in _SKIP:
            out.append((f.name, f, getattr(cfg, f.name)))
    return out


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    groups: dict[str, Any] = {}
    for dotted, f, default in _config_fields():
        section = dotted.split(".")[0] if "." in dotted else "experiment"
        group = groups.setdefault(section, parser.add_argument_group(f"{section} config"))
        names = [f.name, *aliases_of(f.name)]
        flags = [f"--{n}" for n in names] + [f"--{n.replace('_', '-')}" for n in names if "_" in n]
        kwargs: dict[str, Any] = dict(dest=f"cfg:{dotted}", default=argparse.SUPPRESS,
                                      help=f"{f.metadata.get('help', '')} (preset default; base {default!r})")
        if isinstance(default, bool) or "true" in f.metadata.get("choices", ()):  # `--packing` or `--packing false`
            kwargs.update(nargs="?", const="true", metavar="|".join(f.metadata.get("choices", ())) or "BOOL")
        else:
            kwargs.update(metavar=type(default).__name__.upper())
        group.add_argument(*flags, **kwargs)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="set any config field by its dotted name (repeatable)")


def known_flags(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings if s.startswith("--")]


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """parse_args, but an unknown flag names its closest matches."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = unknown[0].split("=")[0]
        parser.error(f"unknown argument {unknown[0]!r}. {suggest(flag, known_flags(parser)) or 'See --help.'}")
    return args


def config_from_args(args: argparse.Namespace, preset: str) -> ExperimentConfig:
    """The preset with the command line's flags and --set overrides applied."""
    changes: dict[str, Any] = {k.split(":", 1)[1]: v for k, v in vars(args).items() if k.startswith("cfg:")}
    changes.update(parse_assignments(getattr(args, "set", [])))
    return override(get_preset(preset), changes)

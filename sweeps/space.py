"""The search space of `python -m sweeps.lr`: which training settings a trial samples, and how.

    space = default_space()                                    # lr_projector, lr_backbones, freeze_vision_encoder
    space = default_space(separate_lrs=True)                   # lr_vision and lr_language instead of lr_backbones
    space, fixed = apply_specs(space, ["lr_projector=1e-3:1e-1", "freeze_vision_encoder=false", "lr_vision=off"])
    params = suggest(trial, space)                             # {"lr_projector": 0.0123, ...}: override(cfg, params)

A spec is `NAME=SPEC` (the `--space` flag, repeatable):

    NAME=LOW:HIGH      log-uniform between LOW and HIGH (learning rates span decades)
    NAME=A,B,...       one of these values (for lr_vision / lr_language, 0 = frozen, -1 = lr_backbones)
    NAME=VALUE         fixed for every trial, not searched
    NAME=off           not searched: the preset's (or the command line's) value applies

Only the names in SEARCHABLE can be searched (their old names too, e.g. lr_mp; see
nanovlm.config.ALIASES); everything else is a runner flag. Every mistake (unknown name, empty or
inverted range, a range for a true/false setting) is a SpaceError, a ConfigError like a malformed
NAME=VALUE or true/false, raised while parsing, before any trial starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Union

from nanovlm.config import ConfigError, canonical, parse_assignments, parse_bool
from nanovlm.config import suggest as did_you_mean


class SpaceError(ConfigError):
    """A bad search-space spec; the message says how to write a good one."""


# name -> type of the config field (all in TrainConfig; config.override accepts the short names).
SEARCHABLE: dict[str, type] = {
    "lr_projector": float,
    "lr_backbones": float,
    "lr_vision": float,
    "lr_language": float,
    "freeze_vision_encoder": bool,
}


@dataclass(frozen=True)
class LogRange:
    """Log-uniform floats in [low, high]."""

    low: float
    high: float

    def describe(self) -> str:
        return f"log-uniform [{self.low:g}, {self.high:g}]"

    def grid(self, points: int) -> list[float]:
        """`points` values evenly spaced in log space, both ends included."""
        if points == 1:
            return [math.sqrt(self.low * self.high)]
        ratio = (self.high / self.low) ** (1 / (points - 1))
        values = [self.low * ratio**i for i in range(points)]
        values[-1] = self.high  # no rounding past the end
        return [float(f"{v:.6g}") for v in values]

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high


@dataclass(frozen=True)
class Choice:
    """One of a few values (true/false, or rates such as 0 = frozen)."""

    values: tuple

    def describe(self) -> str:
        return "one of " + ", ".join(show(v) for v in self.values)

    def grid(self, points: int) -> list:
        return list(self.values)

    def contains(self, value: Any) -> bool:
        return any(value == v and type(value) is type(v) for v in self.values) or (
            isinstance(value, int) and not isinstance(value, bool) and float(value) in self.values)


Dimension = Union[LogRange, Choice]
Space = dict[str, Dimension]


def default_space(separate_lrs: bool = False) -> Space:
    """The issue's space: projector and backbone rates, and whether the vision encoder is frozen."""
    space: Space = {"lr_projector": LogRange(1e-4, 1e-1)}
    if separate_lrs:  # each backbone its own rate; lr_backbones would then be unused
        space["lr_vision"] = LogRange(1e-6, 1e-3)
        space["lr_language"] = LogRange(1e-6, 1e-3)
    else:
        space["lr_backbones"] = LogRange(1e-6, 1e-3)
    space["freeze_vision_encoder"] = Choice((False, True))
    return space


def show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


def check_name(name: str) -> str:
    """The searchable parameter's current name (`lr_mp` -> `lr_projector`); else a SpaceError."""
    typed, name = name, canonical(name.strip().replace("-", "_"))
    if name not in SEARCHABLE:
        hint = did_you_mean(name, SEARCHABLE, n=2)
        raise SpaceError(f"unknown search parameter {typed!r}.{' ' + hint if hint else ''} Searchable: "
                         f"{', '.join(SEARCHABLE)} (set anything else with the runner's flags, e.g. --batch_size 8)")
    return name


def parse_value(name: str, text: str) -> Any:
    """One value of parameter `name`, from the command line."""
    text = text.strip()
    if SEARCHABLE[name] is bool:
        return parse_bool(text, name)
    try:
        value = float(text)
    except ValueError:
        raise SpaceError(f"{name}: expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise SpaceError(f"{name}: expected a finite number, got {text!r}")
    return value


def parse_spec(spec: str) -> tuple[str, Dimension | None, Any]:
    """`NAME=SPEC` -> (name, dimension or None, fixed value or None). See the module docstring."""
    ((name, body),) = parse_assignments([spec], "--space", "NAME=LOW:HIGH, NAME=A,B, NAME=VALUE or NAME=off").items()
    name = check_name(name)
    if not body:
        raise SpaceError(f"--space {spec!r}: nothing after '='")
    if body.lower() == "off":
        return name, None, None
    if ":" in body:
        if SEARCHABLE[name] is bool:
            raise SpaceError(f"--space {spec!r}: {name} is true/false, it has no range; write {name}=true,false "
                             f"to search it or {name}=true to fix it")
        parts = body.split(":")
        if len(parts) != 2:
            raise SpaceError(f"--space {spec!r}: a range is LOW:HIGH, e.g. {name}=1e-5:1e-3")
        low, high = (parse_value(name, p) for p in parts)
        if low <= 0:
            raise SpaceError(f"--space {spec!r}: a log-uniform range needs LOW > 0 (learning rates); to include "
                             f"0 (frozen) use choices, e.g. {name}=0,1e-5,1e-4")
        if low == high:
            raise SpaceError(f"--space {spec!r}: empty range (LOW == HIGH); to fix the value write {name}={parts[0]}")
        if low > high:
            raise SpaceError(f"--space {spec!r}: inverted range (LOW > HIGH); did you mean "
                             f"{name}={parts[1]}:{parts[0]}?")
        return name, LogRange(low, high), None
    items = body.split(",")
    if any(not item.strip() for item in items):
        raise SpaceError(f"--space {spec!r}: an empty value in the list")
    values = tuple(dict.fromkeys(parse_value(name, item) for item in items))  # dedupe, keep order
    if len(values) == 1:
        return name, None, values[0]
    return name, Choice(values), None


def apply_specs(space: Space, specs: Iterable[str]) -> tuple[Space, dict[str, Any]]:
    """The space after the `--space` specs, and the values they fix (applied to every trial)."""
    space, fixed = dict(space), {}
    for spec in specs:
        name, dimension, value = parse_spec(spec)
        space.pop(name, None)
        fixed.pop(name, None)
        if dimension is not None:
            space[name] = dimension
        elif value is not None:
            fixed[name] = value
    return space, fixed


def describe(space: Space) -> dict[str, str]:
    return {name: dim.describe() for name, dim in space.items()}


def grid(space: Space, points: int) -> dict[str, list]:
    """The grid sampler's values: `points` per range, every value of a choice."""
    return {name: dim.grid(points) for name, dim in space.items()}


def grid_size(space: Space, points: int) -> int:
    return math.prod(len(values) for values in grid(space, points).values())


def check_params(space: Space, params: dict[str, Any], what: str) -> dict[str, Any]:
    """Parse and check a set of parameter values (an enqueued trial) against the space."""
    out = {}
    for name, value in params.items():
        name = check_name(name)
        if name not in space:
            raise SpaceError(f"{what}: {name} is not searched in this sweep (searched: {', '.join(space)})")
        value = parse_value(name, value) if isinstance(value, str) else value
        if not space[name].contains(value):
            raise SpaceError(f"{what}: {name}={show(value)} is outside the space ({space[name].describe()})")
        out[name] = value
    missing = [name for name in space if name not in out]
    if missing:
        raise SpaceError(f"{what}: give every searched parameter; missing {', '.join(missing)}")
    return out


def parse_params(text: str) -> dict[str, str]:
    """`lr_projector=0.01,lr_backbones=1e-4` -> {"lr_projector": "0.01", ...} (values parsed by check_params)."""
    return parse_assignments(text.split(","), "--enqueue", f"NAME=VALUE,NAME=VALUE,... (in {text!r})")


def suggest(trial: Any, space: Space) -> dict[str, Any]:
    """Sample (or, for a retried or enqueued trial, read back) one value per dimension."""
    params = {}
    for name, dim in space.items():
        if isinstance(dim, LogRange):
            params[name] = trial.suggest_float(name, dim.low, dim.high, log=True)
        else:
            params[name] = trial.suggest_categorical(name, list(dim.values))
    return params

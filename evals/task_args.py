"""Command-line values that name tasks, checked once for every evals command (evals.run,
evals.<task>, evals.lmms): `--tasks`, `--data TASK=PATH` (+ `--data_dir`), `--revision [TASK=]REV`.

    names = task_names("mmstar,textvqa_val")                          # ["mmstar", "textvqa"]
    data_sources(["mmstar=/data/m.parquet"], "/fix", names)           # {"mmstar": "/data/m.parquet",
                                                                      #  "textvqa": "/fix/textvqa.parquet"}
    per_task(["abc1", "mme=def2"], "--revision", names, bare=True)    # {"mmstar": "abc1", "mme": "def2"}
    fail("--data_dir /nope: no such folder")                          # `error: ...` on stderr, exit 2

lmms-eval's task names are accepted and become ours. A bad value (no TASK=, nothing after it, an
unknown task with the closest names, a task that is not being run, a task given twice) is one
`error:` line and exit status 2, before any model is loaded.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn, Sequence

from evals.registry import TASKS, get_task


def fail(message: str) -> NoReturn:
    """A user's mistake: one `error: ...` line on stderr and exit status 2, no traceback."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _task(name: str, where: str) -> str:
    try:
        return get_task(name.strip()).name
    except KeyError as err:  # its message names the closest tasks and lists them all
        fail(f"{where}: {err.args[0]}")


def task_names(spec: str) -> list[str]:
    """--tasks: task names, comma-separated (each once, in the order given), or "all"."""
    if spec.strip() == "all":
        return list(TASKS)
    names = [_task(n, "--tasks") for n in spec.split(",") if n.strip()]
    if not names:
        fail(f"--tasks {spec!r}: no task named; give names, comma-separated ({','.join(TASKS)}), or 'all'")
    return list(dict.fromkeys(names))


def per_task(values: Sequence[str], flag: str, tasks: Sequence[str], *, bare: bool = False,
             metavar: str = "VALUE") -> dict[str, str]:
    """{task name: value} from a repeatable flag's TASK=VALUE values, for the `tasks` being run.

    With `bare`, a value without TASK= applies to every task, and a TASK=VALUE overrides it for
    its task whatever the order."""
    form = f"{'[TASK=]' if bare else 'TASK='}{metavar}"
    default: str | None = None
    named: dict[str, str] = {}
    for value in values:
        name, sep, given = value.partition("=")
        if not sep and bare and value.strip():
            if default is not None:
                fail(f"{flag} {value!r}: a second value for every task (after {default!r}); give one, "
                     f"and TASK={metavar} for a task that differs")
            default = value
            continue
        if not sep or not given.strip() or not name.strip():
            fail(f"{flag} {value!r}: expected {form}, both parts non-empty")
        task = _task(name, f"{flag} {value!r}")
        if task not in tasks:
            fail(f"{flag} {value!r}: {task} is not a task of this run ({', '.join(tasks)})")
        if task in named:
            fail(f"{flag} {value!r}: {task} already has {named[task]!r}; give one value per task")
        named[task] = given
    return {**({t: default for t in tasks} if default is not None else {}), **named}


def data_sources(values: Sequence[str], data_dir: str | None, tasks: Sequence[str]) -> dict[str, str]:
    """Where each task's data is: --data TASK=PATH_OR_HUB_ID values, then <data_dir>/<task>.parquet
    for the other tasks when --data_dir is given (the rest: the task's hub dataset)."""
    sources = per_task(values, "--data", tasks, metavar="PATH_OR_HUB_ID")
    if not data_dir:
        return sources
    if not Path(data_dir).is_dir():
        fail(f"--data_dir {data_dir}: no such folder (python -m evals.fixtures {data_dir} writes offline sets there)")
    return {**{t: str(Path(data_dir) / f"{t}.parquet") for t in tasks}, **sources}

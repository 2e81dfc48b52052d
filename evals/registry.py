"""The benchmarks this harness runs natively, by name (lmms-eval's task names work too).

    get_task("mmstar")            # -> evals.mmstar.TASK
    get_task("textvqa_val")       # -> evals.textvqa.TASK (lmms-eval's name)
    TASK_NAMES                    # ("mmstar", "scienceqa_img", "ai2d", "textvqa", ...)
"""

from __future__ import annotations

from evals.ai2d import TASK as AI2D
from evals.chartqa import TASK as CHARTQA
from evals.docvqa import TASK as DOCVQA
from evals.mme import TASK as MME
from evals.mmstar import TASK as MMSTAR
from evals.ocrbench import TASK as OCRBENCH
from evals.scienceqa_img import TASK as SCIENCEQA_IMG
from evals.task import Task
from evals.textvqa import TASK as TEXTVQA
from nanovlm.config import suggest

TASKS: dict[str, Task] = {t.name: t for t in (MMSTAR, SCIENCEQA_IMG, AI2D, TEXTVQA, CHARTQA, DOCVQA, OCRBENCH, MME)}
TASK_NAMES = tuple(TASKS)
ALIASES = {t.lmms_task: t.name for t in TASKS.values() if t.lmms_task != t.name}


def get_task(name: str) -> Task:
    """The task by our name or lmms-eval's; KeyError naming the closest names and every task."""
    key = ALIASES.get(name, name)
    if key not in TASKS:
        hint = suggest(name, [*TASKS, *ALIASES])
        raise KeyError(f"unknown task {name!r}. {hint + ' ' if hint else ''}Tasks: {', '.join(TASKS)}")
    return TASKS[key]

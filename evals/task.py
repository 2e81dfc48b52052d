"""What a benchmark is to the harness: where its data lives, how a row becomes a prompt, how an
answer is scored and how item scores become the benchmark's scores.

    class MyTask(Task):
        name, hub_id, split = "mytask", "org/data", "test"
        columns = ("question", "answer")
        post_prompt = "\\nAnswer briefly."    # the prompt: question(row) + post_prompt
        primary = "exact_match"               # by default the one metric: the mean of the item scores
        mean_metrics = ("exact_match",)       # aggregated by lmms-eval's `mean`: stderr = mean_stderr
        def judge(self, row, answer): return Scored(float(answer == row["answer"]), answer, row["answer"])

One module per benchmark (evals/mmstar.py, evals/textvqa.py, ...) defines a subclass and `TASK`;
`evals/harness.py` runs any of them the same way. Prompts, rules and metric names follow
lmms-eval 0.7.3's task of the same name (its `lmms_eval_specific_kwargs: default`); the shared
prompt text is in evals/prompts.py. A task declares only what differs from these defaults.

Standard errors are lmms-eval 0.7.3's (`api/metrics.py::stderr_for_metric`): a metric aggregated
by the registered `mean` gets `mean_stderr` (sample std, n - 1, over sqrt(n)); a task-specific
aggregation function (MMStar's, MME's, OCRBench's) gets none: lmms-eval reports "N/A", recorded
here as None. None of these tasks uses a bootstrapped aggregation (median, f1, bleu, ...). Beside
it, lmms-eval 0.7.x reports `<metric>_stderr_clt` for every metric: the standard error of the
mean of the metric's item scores (`stderr_clt`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from evals.aggregate import clt_stderr, mean, mean_stderr
from evals.postprocess import DEFAULT_STOP, REASONING_TAGS, strip_reasoning

Aggregated = tuple[dict[str, float], dict[str, Any]]  # lmms-eval's metrics, and the breakdown tables by title


@dataclass(frozen=True)
class Scored:
    """One item's score (1/0, or a fraction for VQA accuracy and ANLS), what the rule read from
    the answer ("" when nothing was recognisable: scored as wrong), and the gold answer."""

    score: float
    extracted: Any
    gold: Any
    parsed: bool = True


@dataclass(frozen=True)
class Task:
    name: str = ""                 # the task's name here and in metric names (eval/<name>/...)
    lmms_task: str = ""            # lmms-eval's task of the same definition
    hub_id: str = ""
    hub_config: str | None = None
    revision: str | None = None    # the hub dataset's commit lmms-eval's yaml pins (None: it pins none)
    split: str = "test"
    columns: tuple[str, ...] = ()  # text columns the task reads
    image_columns: tuple[str, ...] = ("image",)
    id_column: str = ""
    max_new_tokens: int = 16       # lmms-eval's value where the task sets one, else 16
    stop: tuple[str, ...] = DEFAULT_STOP  # lmms-eval's `until`: the yaml's, else ("\n\n",)
    post_prompt: str = ""          # what the prompt ends with (evals/prompts.py)
    primary: str = ""              # the headline score
    schema_hint: str = ""          # what the data should look like, for error messages
    scoring: str = ""              # how answers are scored, in words (results.json's "rule")
    mean_metrics: tuple[str, ...] = ()  # metrics lmms-eval aggregates with `mean` (they get mean_stderr)

    def with_options(self, **options: Any) -> "Task":
        """A copy with task options changed (e.g. MMStar's legacy_extract)."""
        return dataclasses.replace(self, **options)

    # ---------------------------------------------------------------- per item

    def prompt(self, row: dict[str, Any]) -> str:
        return self.question(row) + self.post_prompt

    def question(self, row: dict[str, Any]) -> str:
        """The prompt before the post-prompt: the question as the task words it."""
        return row["question"]

    def item_id(self, row: dict[str, Any], index: int) -> Any:
        return row.get(self.id_column, index) if self.id_column else index

    def score(self, row: dict[str, Any], output: str) -> Scored:
        """Score the generated text (already cut at the stop strings). By default the reasoning
        blocks go first, as lmms-eval's CLI does after the filters; tasks with filters override."""
        return self.judge(row, strip_reasoning(output, REASONING_TAGS))

    def judge(self, row: dict[str, Any], answer: str) -> Scored:
        raise NotImplementedError

    # ---------------------------------------------------------------- all items

    def aggregate(self, rows: Sequence[dict[str, Any]], scored: Sequence[Scored]) -> dict[str, float]:
        """lmms-eval's metrics, by lmms-eval's names."""
        return self.aggregate_with_breakdown(rows, scored)[0]

    def aggregate_with_breakdown(self, rows: Sequence[dict[str, Any]], scored: Sequence[Scored]) -> Aggregated:
        """lmms-eval's metrics, and finer scores worth a table (sub-axes, subtasks, splits; not
        lmms-eval metrics) computed with them. By default each metric is lmms-eval's `mean` of its
        items and there is no breakdown; tasks with their own aggregation override this."""
        return {name: mean(items) for name, items in self.metric_items(rows, scored).items()}, {}

    def metric_items(self, rows: Sequence[dict[str, Any]], scored: Sequence[Scored]) -> dict[str, list[float]]:
        """The item scores each lmms-eval metric is aggregated over (lmms-eval's per-metric
        items). By default one metric, the primary one, over every item; tasks whose
        process_results gives a metric only some items (a category, a split) override this."""
        return {self.primary: [s.score for s in scored]}

    def stderr(self, rows: Sequence[dict[str, Any]], scored: Sequence[Scored]) -> dict[str, float | None]:
        """lmms-eval's `<metric>_stderr` for each metric: mean_stderr of its items when lmms-eval
        aggregates it with `mean`, else None (lmms-eval's "N/A": no stderr for a task function)."""
        return {name: mean_stderr(items) if name in self.mean_metrics else None
                for name, items in self.metric_items(rows, scored).items()}

    def stderr_clt(self, rows: Sequence[dict[str, Any]], scored: Sequence[Scored]) -> dict[str, float | None]:
        """lmms-eval's `<metric>_stderr_clt`: the standard error of the mean of each metric's item
        scores (for a metric that is not that mean, e.g. MMStar's average, in item units)."""
        return {name: clt_stderr(items) for name, items in self.metric_items(rows, scored).items()}

    def rule(self) -> str:
        """How answers are scored, in words (results.json); tasks with scoring options override."""
        return self.scoring

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "lmms_eval_task": self.lmms_task, "hub_id": self.hub_id,
                "hub_config": self.hub_config, "revision": self.revision, "split": self.split,
                "post_prompt": self.post_prompt,
                "stop": list(self.stop), "reasoning_tags": [list(t) for t in REASONING_TAGS],
                "rule": self.rule(), "primary": self.primary}

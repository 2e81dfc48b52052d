"""What the MLflow UI shows first: the experiment tags and links that make it a training dashboard.

    experiment_tags()      # {"mlflow.experimentKind": ..., "mlflow.sharedViewState.training": <saved view>}
    runs_view("Sweep s1", {"Sweep": [...]}, columns=[param_column("train.lr_projector")], parallel=(params, metrics))
    ui_link("sqlite:////x/mlflow.db", "1", view="training")
        # -> http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning&viewStateShareKey=training...

No mlflow import: these are plain strings that `nanovlm.tracking` writes. What the UI (MLflow 3.17)
does with them, read from its JavaScript bundle (site-packages/mlflow/server/js/build):
- **Landing page.** Opening an experiment redirects to the Overview (GenAI) or the Runs tab by the
  UI-wide *workflow type*: `?workflowType=machine_learning` in the URL, else the sidebar's
  "GenAI / Model training" switch, remembered per browser (localStorage `mlflow.workflowType_v1`),
  else GenAI. The bundle reads the experiment tag `mlflow.experimentKind` instead only when its
  workflow-switch feature flag is off (hard-wired on in 3.17); we set it anyway
  (`custom_model_development`, the UI's "Machine learning"), for UIs that go by it. Links made
  here carry the URL flag.
- **Chart layouts.** The run page's charts are grouped by metric prefix (everything before the last
  `/`), sections sorted by name, and any change is saved in the browser only (localStorage), so no
  API can set them. The runs page's chart view can be set per experiment: a *saved view* is the
  experiment tag `mlflow.sharedViewState.<id>` holding {name, createdAt, updatedAt, state}, where
  state is the page's JSON (columns, filter, chart sections and cards); the "Views" menu lists
  them and `?viewStateShareKey=<id>` opens one.
"""

from __future__ import annotations

import json
import re
import time
from typing import Iterable
from urllib.parse import urlencode

from nanovlm import metrics as metric_names

KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
TRAINING_VIEW = "training"  # the saved view every experiment gets
DEFAULT_UI = "http://127.0.0.1:5000"  # where `mlflow ui` listens unless told otherwise

# The training view: curves a user looks at first, in this order. A metric no run logs has no chart
# (the UI hides empty charts); metrics not listed get the UI's own sections after these.
TRAINING_SECTIONS: dict[str, list[str]] = {
    "Loss": [metric_names.TRAIN_LOSS, metric_names.VAL_LOSS, metric_names.BEST_VAL_LOSS],
    "Learning rate": [metric_names.lr_name(part) for part in ("projector", "vision", "language")],
    "Throughput": [metric_names.SAMPLES_PER_S, metric_names.TOKENS_PER_S, metric_names.PEAK_MEMORY_MB, metric_names.GRAD_NORM],
    "Benchmarks": [metric_names.eval_name("synthetic", "overall"), metric_names.eval_name("synthetic_blind", "overall"),
                   metric_names.eval_name("mmstar", "average")],
}
# The runs table's default columns (MLflow's own).
DEFAULT_COLUMNS = ["attributes.`Source`", "attributes.`Models`", "attributes.`Dataset`"]


def param_column(key: str) -> str:
    return f"params.`{key}`"


def metric_column(key: str) -> str:
    return f"metrics.`{key}`"


def tag_column(key: str) -> str:
    return f"tags.`{key}`"


def _uid(*parts: str) -> str:
    return "nanovlm-" + re.sub(r"[^A-Za-z0-9]+", "-", "-".join(parts)).strip("-").lower()


def _line_chart(metric: str, section: str) -> dict:
    """A line chart card as the UI stores one (its defaults spelled out, step on the x axis)."""
    return {"uuid": _uid(section, metric), "type": "LINE", "metricSectionId": _uid(section), "deleted": False,
            "isGenerated": True, "displayName": metric, "runsCountToCompare": 10, "metricKey": metric,
            "selectedMetricKeys": [metric], "lineSmoothness": 0, "xAxisScaleType": "linear", "scaleType": "linear",
            "range": {}, "xAxisKey": "step", "selectedXAxisMetricKey": "", "yAxisKey": "metric",
            "yAxisExpressions": [], "ignoreOutliers": False, "useGlobalXaxisKey": True,
            "useGlobalLineSmoothing": True}


def _parallel_chart(params: list[str], metrics: list[str], section: str) -> dict:
    return {"uuid": _uid(section, "parallel"), "type": "PARALLEL", "metricSectionId": _uid(section),
            "deleted": False, "isGenerated": True, "runsCountToCompare": 100, "selectedParams": params,
            "selectedMetrics": metrics, "showAllRuns": True}


def runs_view(name: str, sections: dict[str, list[str]], *, columns: Iterable[str] = (), search_filter: str = "",
              parallel: tuple[list[str], list[str]] | None = None) -> str:
    """A saved view of the runs page (the value of a `mlflow.sharedViewState.<id>` tag): line charts
    of `sections` ({section name: metrics}) in order, an optional parallel-coordinates chart
    (params, metrics) heading the first section, the table's columns beside the run name and start
    time (`param_column(...)`, ...; DEFAULT_COLUMNS are the UI's own) and a search filter."""
    charts, section_list = [], []
    for i, (section, metrics) in enumerate(sections.items()):
        if i == 0 and parallel is not None:
            charts.append(_parallel_chart(*parallel, section))
        charts.extend(_line_chart(metric, section) for metric in metrics)
        section_list.append({"uuid": _uid(section), "name": section, "display": True, "isReordered": True,
                             "deleted": False, "isGenerated": False})
    state = {"searchFilter": search_filter, "orderByKey": "attributes.start_time", "orderByAsc": False,
             "startTime": "ALL", "lifecycleFilter": "Active", "modelVersionFilter": "All Runs", "datasetsFilter": [],
             "selectedColumns": list(columns), "compareRunCharts": charts,
             "compareRunSections": section_list, "isAccordionReordered": True, "hideEmptyCharts": True,
             "useGroupedValuesInCharts": True, "viewMaximized": False, "runListHidden": False, "groupBy": None,
             "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""}}
    now = int(time.time() * 1000)
    return json.dumps({"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)})


def experiment_tags() -> dict[str, str]:
    """The tags every experiment of this project gets when it is created (or first used)."""
    columns = [*DEFAULT_COLUMNS, metric_column(metric_names.TRAIN_LOSS), metric_column(metric_names.VAL_LOSS), tag_column("preset")]
    return {KIND_TAG: TRAINING_KIND,
            VIEW_TAG_PREFIX + TRAINING_VIEW: runs_view("Training curves", TRAINING_SECTIONS, columns=columns)}


def ui_base(tracking_uri: str) -> str:
    """The UI serving this store: an `mlflow server` URI is one; a database file gets `mlflow ui`'s default."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else DEFAULT_UI


def ui_link(tracking_uri: str, experiment_id: str, run_id: str | None = None, *, view: str | None = None,
            charts: bool = True) -> str:
    """A link that opens on the training runs (not the GenAI overview): a run's page, or the runs
    page with a saved view (its charts when `charts`)."""
    query = {"workflowType": "machine_learning"}
    if run_id:
        return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}?{urlencode(query)}"
    if view:
        query["viewStateShareKey"] = view
        if charts:
            query["compareRunsMode"] = "CHART"
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?{urlencode(query)}"

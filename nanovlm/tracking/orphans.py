"""Runs left RUNNING by a process that died without ending them (SIGKILL, the OOM killer) -> KILLED.

    MLflowTracker.start(...) tags each run with owner_tags(): {nanovlm.host: <hostname>, nanovlm.pid: <pid>}
    mark_orphans_killed("smoke")     # RUNNING runs of this host whose process is gone -> KILLED; their ids

SIGTERM and Ctrl-C end a run themselves (signals.py); SIGKILL cannot be caught, so the next start
cleans up. Runs from other hosts are left alone: their processes cannot be checked from here. A reused
pid makes a dead run look alive, which errs on the safe side.
"""

from __future__ import annotations

import logging
import os
import socket

from nanovlm.tracking.store import open_client

log = logging.getLogger(__name__)

HOST_TAG = "nanovlm.host"
PID_TAG = "nanovlm.pid"


def owner_tags() -> dict[str, str]:
    """Who runs it: what tells a live run from a dead one."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def pid_alive(pid: int) -> bool:
    try:
        import psutil
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # exists, owned by someone else
        return True
    try:
        # A killed child its parent has not reaped yet is a zombie: dead for our purpose.
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def mark_orphans_killed(experiment: str, tracking_uri: str | None = None) -> list[str]:
    """Set RUNNING runs of this host whose process is gone to KILLED; return their ids."""
    client, _ = open_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{socket.gethostname()}'"
    # All pages first, then change: ending runs while paging would shift the pages under us.
    running, page = [], client.search_runs([found.experiment_id], query)
    while True:
        running.extend(page)
        if not page.token:
            break
        page = client.search_runs([found.experiment_id], query, page_token=page.token)
    killed = []
    for run in running:
        try:
            pid = int(run.data.tags.get(PID_TAG, ""))
        except ValueError:
            continue
        if not pid_alive(pid):
            client.set_terminated(run.info.run_id, status="KILLED")
            killed.append(run.info.run_id)
    if killed:
        log.info("marked %d orphaned runs of experiment %r KILLED: %s", len(killed), experiment, killed)
    return killed

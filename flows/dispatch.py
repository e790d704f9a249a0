"""heal-pipeline's children as deployment runs: launch, wait, re-schedule on a parent retry.

Why deployment runs and not subflows: Prefect's UI offers Retry only for flow runs that came from a deployment,
so a shard that fails on a GPU worker can be retried alone only if it is its own deployment run. Each child is
created with an idempotency key (run id + child + config hash): a retried or resumed parent re-attaches to the
children it already launched instead of launching them again, and re-schedules only those that did not
complete. Children are linked to the parent (``as_subflow``) so the UI shows them under it, and tagged
``heal-run:<run id>`` so tools can find them through the REST API.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.deployments import run_deployment
from prefect.states import AwaitingRetry

SHARD_DEPLOYMENT = "heal-shard/heal-shard"
TRAIN_DEPLOYMENT = "heal-train/heal-train"
EVAL_DEPLOYMENT = "heal-eval/heal-eval"


class ChildRunsFailed(RuntimeError):
    """Some children ended in a state other than COMPLETED; the message says which and how to go on."""


@dataclass(frozen=True)
class Child:
    name: str  # flow run name, e.g. "<run id>-shard-00003"
    key: str  # idempotency key
    parameters: dict[str, Any]


def run_children(
    deployment: str,
    children: Sequence[Child],
    run_id: str,
    poll_seconds: float,
    rerun_completed: bool = False,
    on_completed: Callable[[Child], None] = lambda child: None,
) -> None:
    """Launch (or re-attach to) one deployment run per child and wait until every one is final.

    A child found in a failed, crashed or cancelled state is re-scheduled (AwaitingRetry, as the UI's Retry
    does); with ``rerun_completed`` a completed one is too, for callers that know its outputs are missing.
    Raises ``ChildRunsFailed`` naming every child that did not complete, after all of them are final, so
    the ones that can finish do; a child that disappears (deleted, or lost with the server's database) counts as
    failed, instead of being waited for forever. Waiting costs two requests a poll however many children are
    pending (``poll``).
    """
    logger = get_run_logger()
    runs: dict[UUID, Child] = {}
    for child in children:
        run = run_deployment(
            deployment,
            parameters=child.parameters,
            flow_run_name=child.name,
            timeout=0,
            idempotency_key=child.key,
            tags=[f"heal-run:{run_id}"],
        )
        runs[run.id] = child
    with get_client(sync_client=True) as client:
        for run in paged(client, FlowRunFilter(id=FlowRunFilterId(any_=list(runs)))):
            state = run.state
            if state is not None and state.is_final() and (rerun_completed or not state.is_completed()):
                logger.info("%s was %s: re-scheduled", run.name, state.name)
                client.set_flow_run_state(run.id, AwaitingRetry(message="re-scheduled by heal-pipeline"), force=True)
        pending, failed = set(runs), []
        while pending:
            time.sleep(poll_seconds)
            ended, gone = poll(client, pending)
            for lost in gone:  # deleted, or lost with the server's database
                pending.discard(lost)
                failed.append(f"{runs[lost].name} (flow run {lost}): no longer exists on the Prefect server")
            for run in ended:
                if run.id not in pending:  # seen on an earlier page of this poll
                    continue
                pending.discard(run.id)
                if run.state.is_completed():
                    on_completed(runs[run.id])
                else:
                    failed.append(f"{run.name} (flow run {run.id}): {run.state.name}: {run.state.message or ''}")
    if failed:
        raise ChildRunsFailed(
            f"{len(failed)} of {len(runs)} {deployment} runs did not complete:\n  "
            + "\n  ".join(failed)
            + "\nFix the cause, retry them (Prefect UI Retry, or POST /api/flow_runs/<id>/set_state), then retry "
            "this run or `heal resume`: completed work is kept."
        )


FINAL = [StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]


def poll(client: SyncPrefectClient, pending: set[UUID]) -> tuple[list[FlowRun], set[UUID]]:
    """(the runs among ``pending`` now in a final state, the ids among them the server no longer has). Two counts,
    whatever the number of children, and reads only for children that ended since the last poll (a page per 200);
    the ids of the runs still pending filter every request, so it shrinks as they end."""
    ids = FlowRunFilterId(any_=list(pending))
    gone: set[UUID] = set()
    if client.count_flow_runs(flow_run_filter=FlowRunFilter(id=ids)) < len(pending):
        gone = pending - {run.id for run in paged(client, FlowRunFilter(id=ids))}
    ended = FlowRunFilter(id=ids, state=FlowRunFilterState(type=FlowRunFilterStateType(any_=FINAL)))
    return list(paged(client, ended)), gone


def paged(client: SyncPrefectClient, flow_run_filter: FlowRunFilter) -> Iterator[FlowRun]:
    """Every flow run ``flow_run_filter`` matches, a page at a time: the server answers a read with at most its
    page limit (``PREFECT_SERVER_API_DEFAULT_LIMIT``, 200), so one read of 300 children would miss 100 of them. A
    count first: a filter that matches nothing costs one request. Pages are in id order; a run that changes state
    between two pages may be seen twice or on the next poll, never lost."""
    total = client.count_flow_runs(flow_run_filter=flow_run_filter)
    offset = 0
    while offset < total:
        page = client.read_flow_runs(flow_run_filter=flow_run_filter, sort=FlowRunSort.ID_DESC, offset=offset)
        if not page:
            return
        yield from page
        offset += len(page)

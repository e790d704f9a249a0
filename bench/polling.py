"""What heal-pipeline's wait for its children costs the Prefect API: requests per poll with 12, 100 and 1,000 children.

A real Prefect server (Prefect's test harness: a subprocess server on a temporary SQLite database), a work pool
created paused, so no child runs, and ``--children`` flow runs of one deployment on it. Then ``flows.dispatch.poll``,
the parent's poll, over all of them, its requests counted on the client's HTTP hook:

1. while every child is scheduled (nothing ended): the steady cost of waiting;
2. after every child was set Completed: the poll that collects them (reads come in pages of the server's limit, 200).

    python bench/polling.py [--children 12,100,1000]

Last line: the headline figure, the requests of a poll with nothing ended at the largest count.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import TYPE_CHECKING
from uuid import UUID

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


def measure(client: SyncPrefectClient, deployment: UUID, children: int) -> dict[str, float]:
    """One count of children: what one read of them all returns (heal's wait before: one read a poll, which the
    server's page limit cut), and the requests and wall time of a poll before and after they all end."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.states import Completed

    from flows.dispatch import poll

    ids = {client.create_flow_run_from_deployment(deployment, name=f"child-{children}-{i}").id for i in range(children)}
    one_read = len(client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(ids)))))
    requests: list[str] = []
    client._client.event_hooks["request"].append(lambda request: requests.append(request.url.path))
    started = time.perf_counter()
    ended, gone = poll(client, ids)
    waiting = (len(requests), time.perf_counter() - started)
    assert not ended and not gone, "a child of a paused pool ended"
    client._client.event_hooks["request"].clear()
    for child in ids:
        client.set_flow_run_state(child, Completed(), force=True)
    requests.clear()
    client._client.event_hooks["request"].append(lambda request: requests.append(request.url.path))
    started = time.perf_counter()
    ended, gone = poll(client, ids)
    collecting = (len(requests), time.perf_counter() - started)
    client._client.event_hooks["request"].clear()
    assert {run.id for run in ended} == ids and not gone, "a child was hidden"
    return {
        "children": children,
        "one_read": one_read,
        "waiting_requests": waiting[0],
        "waiting_s": waiting[1],
        "collecting_requests": collecting[0],
        "collecting_s": collecting[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--children", default="12,100,1000", help="comma-separated child counts")
    args = parser.parse_args()
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.testing.utilities import prefect_test_harness

    rows = []
    with prefect_test_harness(server_startup_timeout=60), get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="paused", type="process", is_paused=True), overwrite=True)
        flow_id = client.create_flow_from_name("heal-polling-child")
        for count in (int(c) for c in args.children.split(",")):
            deployment = client.create_deployment(
                flow_id=flow_id, name=f"child-{count}", work_pool_name="paused", entrypoint="flows.shard:heal_shard"
            )
            rows.append(measure(client, deployment, count))
    print(
        "| children | runs one unpaged read returns (the wait before) | requests per poll, nothing ended | its wall ms "
        "| requests of the poll that collects them all | its wall ms |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['children']:,} | {r['one_read']:,} | {r['waiting_requests']} | {1000 * r['waiting_s']:.0f} | "
            f"{r['collecting_requests']} | {1000 * r['collecting_s']:.0f} |"
        )
    top = rows[-1]
    print(f"requests per poll with {top['children']:,} children pending: {top['waiting_requests']}")


if __name__ == "__main__":
    main()

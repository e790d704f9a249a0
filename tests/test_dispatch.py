"""heal-pipeline's children as deployment runs (flows/dispatch.py), on a real Prefect API server."""

from __future__ import annotations

import re
import threading
import time

import pytest


def test_a_child_run_that_disappears_fails_the_parent_naming_it(prefect_api):
    """Children whose flow runs are deleted (by hand, or lost with the server's database) while the parent waits:
    the parent fails naming each of them, instead of waiting forever. No worker serves the pool: the children
    stay scheduled until they are deleted."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from flows.dispatch import Child, ChildRunsFailed, run_children

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="unserved", type="process"), overwrite=True)
        flow_id = client.create_flow_from_name("heal-vanishing-child")
        client.create_deployment(flow_id=flow_id, name="child", work_pool_name="unserved",
                                 entrypoint="flows.shard:heal_shard")

    def delete_them() -> None:
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["heal-run:gone"])))
                if len(runs) == 2:
                    for run in runs:
                        client.delete_flow_run(run.id)
                    return
                time.sleep(0.2)

    @flow(name="heal-vanishing-parent")
    def parent() -> None:
        run_children("heal-vanishing-child/child", [Child("gone-shard-0", "gone-0", {}), Child("gone-shard-1", "gone-1", {})],
                     "gone", poll_seconds=0.2)

    deleter = threading.Thread(target=delete_them)
    deleter.start()
    with pytest.raises(ChildRunsFailed, match=r"2 of 2 .* did not complete") as failed:
        parent()
    deleter.join()
    for name in ("gone-shard-0", "gone-shard-1"):
        assert re.search(rf"{name} \(flow run \S+\): no longer exists on the Prefect server", str(failed.value))

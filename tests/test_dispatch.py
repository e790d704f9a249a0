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
        client.create_deployment(
            flow_id=flow_id, name="child", work_pool_name="unserved", entrypoint="flows.shard:heal_shard"
        )

    def delete_them() -> None:
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["heal-run:gone"]))
                )
                if len(runs) == 2:
                    for run in runs:
                        client.delete_flow_run(run.id)
                    return
                time.sleep(0.2)

    @flow(name="heal-vanishing-parent")
    def parent() -> None:
        run_children(
            "heal-vanishing-child/child",
            [Child("gone-shard-0", "gone-0", {}), Child("gone-shard-1", "gone-1", {})],
            "gone",
            poll_seconds=0.2,
        )

    deleter = threading.Thread(target=delete_them)
    deleter.start()
    with pytest.raises(ChildRunsFailed, match=r"2 of 2 .* did not complete") as failed:
        parent()
    deleter.join()
    for name in ("gone-shard-0", "gone-shard-1"):
        assert re.search(rf"{name} \(flow run \S+\): no longer exists on the Prefect server", str(failed.value))


def test_waiting_costs_two_requests_a_poll_and_the_page_limit_hides_no_child(prefect_api):
    """250 children, more than the server's page limit (200), on a pool no worker serves: a poll is two requests
    with 12 pending or 250; once they all end, every one is returned (a page of reads per 200), none taken for
    gone; a deleted one is named as gone."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.states import Completed

    from flows.dispatch import poll

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="paused", type="process", is_paused=True), overwrite=True)
        deployment = client.create_deployment(
            flow_id=client.create_flow_from_name("heal-many-children"),
            name="child",
            work_pool_name="paused",
            entrypoint="flows.shard:heal_shard",
        )
        children = [client.create_flow_run_from_deployment(deployment, name=f"many-{i}").id for i in range(250)]
        requests: list[str] = []
        client._client.event_hooks["request"].append(lambda request: requests.append(request.url.path))

        def counted(pending: set) -> tuple[list, set, int]:
            requests.clear()
            ended, gone = poll(client, pending)
            return ended, gone, len(requests)

        assert counted(set(children[:12])) == ([], set(), 2)
        assert counted(set(children)) == ([], set(), 2)
        for child in children:
            client.set_flow_run_state(child, Completed(), force=True)
        client.delete_flow_run(children[7])
        ended, gone, made = counted(set(children))
        assert gone == {children[7]}
        assert sorted(run.id for run in ended) == sorted(children[:7] + children[8:])
        assert made == 1 + 3 + 3  # a count of them all; one is gone: who (a count, two pages); who ended (likewise)

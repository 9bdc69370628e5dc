"""Prometheus metrics of a server process at /metrics."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import Client as HttpClient
from prometheus_client.parser import text_string_to_metric_families

from broker_ws.publish.api import apublish_quote

pytestmark = pytest.mark.django_db(transaction=True)


def scrape(remote: str = "127.0.0.1") -> dict[str, float]:
    response = HttpClient(REMOTE_ADDR=remote).get("/metrics")
    assert response.status_code == 200
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


async def test_metrics_count_sessions_subscriptions_frames_and_failures(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """Sessions, authorized sessions, subscriptions, frames by marker, auth failures
    and close codes move as a session lives."""
    alice = await make_user("alice", ["1001"])
    before = await database_sync_to_async(scrape)()
    client = await client_factory()
    await client.authorize(alice.token)
    await client.subscribe("EURUSD", "GBPUSD")
    await apublish_quote("EURUSD", 1.1, 1.2)
    assert (await client.recv())[0] == "t"
    refused = await client_factory()
    await refused.send({"authorization": "garbage"})
    await refused.recv_close()
    after = await database_sync_to_async(scrape)()

    def grew(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert grew("broker_ws_sessions{}") == 1  # the refused one has gone again
    assert grew("broker_ws_authenticated_sessions{}") == 1
    assert grew("broker_ws_subscriptions{}") == 2
    assert grew("broker_ws_frames_sent_total{marker=t}") == 1
    assert grew("broker_ws_auth_failures_total{}") == 1
    assert grew("broker_ws_closes_total{code=4001}") == 1
    await client.close()
    final = await database_sync_to_async(scrape)()
    assert final["broker_ws_sessions{}"] == before["broker_ws_sessions{}"]
    assert final["broker_ws_subscriptions{}"] == before["broker_ws_subscriptions{}"]


def test_metrics_are_for_operators_only() -> None:
    """The demo serves /metrics to loopback and staff, not to anyone else."""
    assert HttpClient(REMOTE_ADDR="192.0.2.7").get("/metrics").status_code == 403

"""metrics.py: the exposition (Dapr's exact names, cumulative buckets), consumer lag from
fetched high watermarks and commits, and the per-subscription status of GET /v1.0/metadata.
Each test uses its own app-id: the state is per process."""

from __future__ import annotations

import uuid

from prometheus_client import generate_latest

from tidings.sidecar.runtime import metrics


def app_id() -> str:
    return f"app-{uuid.uuid4().hex[:8]}"


def lines(name: str, app: str) -> list[str]:
    text = generate_latest().decode()
    return [
        line for line in text.splitlines() if line.startswith(name) and f'app_id="{app}"' in line
    ]


def test_dapr_counters_keep_their_names_and_histograms_are_cumulative() -> None:
    app = app_id()
    metrics.record_egress(app, "pubsub", "orders", success=True, elapsed_s=0.0007)
    metrics.record_egress(app, "pubsub", "orders", success=True, elapsed_s=0.003)
    metrics.record_egress(app, "pubsub", "orders", success=False, elapsed_s=0.02)
    assert lines("dapr_component_pubsub_egress_count", app) == [
        f'dapr_component_pubsub_egress_count{{app_id="{app}",component="pubsub",namespace="",'
        f'success="true",topic="orders"}} 2.0',
        f'dapr_component_pubsub_egress_count{{app_id="{app}",component="pubsub",namespace="",'
        f'success="false",topic="orders"}} 1.0',
    ]
    text = generate_latest().decode()
    assert "dapr_component_pubsub_egress_count_total" not in text
    assert "# TYPE dapr_component_pubsub_egress_count untyped" in text
    buckets = {
        line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in lines("dapr_component_pubsub_egress_latencies_bucket", app)
        if 'success="true"' in line
    }
    assert (buckets["0.5"], buckets["1"], buckets["2"], buckets["5"], buckets["+Inf"]) == (
        0.0,
        1.0,
        1.0,
        2.0,
        2.0,
    )  # ms


def test_lag_is_log_end_minus_committed_per_assigned_partition() -> None:
    app = app_id()
    progress = metrics.consumer_progress(app, "pubsub", "group-a")
    progress.assign([("orders", 0), ("orders", 1)])
    progress.fetched("orders", 0, 10, 15)  # resumed at committed offset 10, log end 15
    assert progress.lag("orders", 0) == 5 and progress.lag("orders", 1) is None
    progress.committed("orders", 0, 13)
    assert progress.lag("orders", 0) == 2
    progress.fetched("orders", 0, 15, 20)
    progress.committed("orders", 0, 20)
    assert progress.lag("orders", 0) == 0
    assert lines("tidings_pubsub_consumer_lag", app) == [
        f'tidings_pubsub_consumer_lag{{app_id="{app}",component="pubsub",partition="0",'
        'topic="orders"} 0.0'
    ]
    progress.revoke()
    assert lines("tidings_pubsub_consumer_lag", app) == []  # nothing owned while rebalancing
    progress.assign([("orders", 1)])
    assert progress.partitions == {}
    assert lines("tidings_pubsub_rebalances_total", app) == [
        f'tidings_pubsub_rebalances_total{{app_id="{app}",component="pubsub",'
        'consumer_group="group-a"} 2.0'
    ]
    metrics.drop_consumer(app, "pubsub", progress)
    assert metrics.consumer_group(app, "pubsub") is None


def test_subscription_status() -> None:
    app = app_id()
    progress = metrics.consumer_progress(app, "pubsub", "g")
    progress.assign([("orders", 0), ("orders", 1), ("other", 0)])
    progress.fetched("orders", 1, 4, 9)
    deliveries = metrics.topic_deliveries(app, "pubsub", "orders")
    deliveries.in_flight = 1
    deliveries.failed("failed: RETRY status returned from app")
    status = metrics.subscription_status(app, "pubsub", "orders")
    assert status["consumerGroup"] == "g" and status["inFlight"] == 1 and status["lag"] == 5
    assert status["partitions"] == [
        {"partition": 0, "logEndOffset": None, "committedOffset": None, "lag": None},
        {"partition": 1, "logEndOffset": 9, "committedOffset": 4, "lag": 5},
    ]
    assert status["lastError"]["message"] == "failed: RETRY status returned from app"
    assert status["lastError"]["time"].endswith("Z")


def test_polled_consumer_status_and_lag_gauge() -> None:
    """Redis and JetStream consumers (no Kafka partitions) feed the same status and gauge;
    they never pose as a Kafka group for tracing (``consumer_group``)."""
    app = app_id()
    polled = metrics.polled_consumer(app, "js", "app-durable")
    polled.name_group("orders", "app-durable-orders")
    assert metrics.subscription_status(app, "js", "orders")["consumerGroup"] == "app-durable-orders"
    assert metrics.subscription_status(app, "js", "orders")["partitions"] == []
    polled.polled("orders", "ORDERS", lag=7, pending=2)
    status = metrics.subscription_status(app, "js", "orders")
    assert status["partitions"] == [
        {
            "partition": "ORDERS",
            "logEndOffset": None,
            "committedOffset": None,
            "lag": 7,
            "pending": 2,
        }
    ]
    assert status["lag"] == 7
    assert metrics.consumer_group(app, "js") is None
    assert lines("tidings_pubsub_consumer_lag", app) == [
        f'tidings_pubsub_consumer_lag{{app_id="{app}",component="js",partition="ORDERS",'
        'topic="orders"} 7.0'
    ]
    polled.forget([])
    assert metrics.subscription_status(app, "js", "orders")["consumerGroup"] == "app-durable"
    assert lines("tidings_pubsub_consumer_lag", app) == []
    metrics.drop_consumer(app, "js", polled)
    assert metrics.subscription_status(app, "js", "orders")["consumerGroup"] is None

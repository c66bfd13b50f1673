"""Start order and ordered shutdown of one sidecar.

Start: load resources (refuse to start on a bad one) → start each component's producer side →
serve the HTTP API → wait until the app port accepts connections → discover programmatic
subscriptions → start consumer groups. The API serves before the first delivery, and deliveries
start only once the app is reachable (dapr-pubsub-contract.md §1.5, §2.1, §5.8).

Hot reload: the resources folders are polled; a changed file set reloads components and
subscriptions without a restart (the operator rewrites the mounted Secret, §5.8).

Stop (SIGTERM): stop fetching, let in-flight deliveries finish within
``graceful_shutdown_seconds``, commit, leave the groups, stop the API, close the app channel.

Neighbours: ``publishing/publisher.py`` (publish path), ``delivery/engine.py`` (one ``Dispatcher``
per pubsub), ``brokers/`` (one broker per component), ``inbound/http/app.py`` (HTTP API).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..brokers.base import FEATURES, Broker, BrokerError, Handler, Record
from ..brokers.kafka import KafkaBroker
from ..brokers.memory import MemoryBroker
from ..delivery.bulk import BatchingHandler, BulkDispatcher
from ..delivery.channel import open_app_channel
from ..delivery.engine import Dispatcher
from ..delivery.subscriptions import effective_subscriptions
from ..inbound.grpc.server import DaprServicer, start_grpc_server
from ..inbound.grpc.streaming import StreamChannel, StreamingSubscriptions
from ..inbound.http.app import create_app, create_public_app
from ..inbound.http.keys import EXTENDED_KEY
from ..publishing.publisher import Publisher
from ..resources import LoadedComponent, ResourceError, Resources, TopicSubscription, load_resources
from ..resources.kafka import RetryPolicy
from ..resources.loading import resource_files
from ..resources.models import SubscriptionType
from . import metrics, tracing
from .listening import bind_sites, host_port, usable_addresses
from .settings import SidecarSettings
from .tasks import stop_tasks

log = logging.getLogger(__name__)

__all__ = ["BROKER_CLOSE_MARGIN_S", "Sidecar", "run_sidecar"]

BROKER_CLOSE_MARGIN_S = 15.0
"""Seconds a broker's close may take beyond ``graceful_shutdown_seconds`` (leaving the group,
the last commits, closing connections) before the sidecar exits without it."""


def _broker_for(component: LoadedComponent, app_id: str, max_body_size: int) -> Broker:
    if component.kafka is not None:
        return KafkaBroker(component, app_id=app_id, max_body_size=max_body_size)
    # Imported on first use: a sidecar without such a component does not pay for redis-py or
    # nats-py in start-up time and resident memory (benchmarks/footprint.py).
    if component.redis is not None:
        from ..brokers.redis import RedisBroker

        return RedisBroker(component, app_id=app_id)
    if component.jetstream is not None:
        from ..brokers.jetstream import JetStreamBroker

        return JetStreamBroker(component, app_id=app_id)
    return MemoryBroker(component.name)


def _retry_policy(component: LoadedComponent) -> RetryPolicy:
    for meta in (component.kafka, component.redis, component.jetstream):
        if meta is not None:
            return meta.retry
    return RetryPolicy()


def _component_fingerprint(
    component: LoadedComponent,
) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    return (
        component.type,
        component.component.spec.version,
        tuple(sorted(component.metadata.items())),
    )


def _resources_fingerprint(settings: SidecarSettings) -> str:
    """Content hash of every resource file; Secret volume updates swap symlinks, so mtimes lie."""
    digest = hashlib.sha256()
    try:
        for path in resource_files(settings.resources_paths):
            digest.update(str(path).encode())
            digest.update(path.read_bytes())
    except (OSError, ResourceError):
        digest.update(b"<unreadable>")
    return digest.hexdigest()


@dataclass
class _Started:
    broker: Broker
    dispatcher: Dispatcher | None
    fingerprint: tuple[str, str, tuple[tuple[str, str], ...]]
    connected: bool = False
    """``broker.start()`` succeeded: only then is the broker given its subscriptions, so no
    consumer tries a connection that is not up yet (a spurious error and ``lastError``)."""


class Sidecar:
    """One running sidecar for one app-id; also the ``RuntimeView`` the HTTP API reads."""

    def __init__(self, settings: SidecarSettings) -> None:
        self.settings = settings
        self.app_id = settings.app_id
        self._components: dict[str, LoadedComponent] = {}
        self._brokers: dict[str, Broker] = {}
        self._started: dict[str, _Started] = {}
        self._start_errors: dict[str, str] = {}  # component -> why its last start failed
        self.publisher = Publisher(
            app_id=self.app_id, brokers=self._brokers, components=self._components
        )
        self.channel = open_app_channel(settings) if settings.app_port else None
        self._declarative: tuple[TopicSubscription, ...] = ()
        self._programmatic: list[TopicSubscription] = []
        self._effective: list[TopicSubscription] = []
        self._app_ready = False
        self._discovered = False  # deliveries start only after /dapr/subscribe was asked
        self._streamed_before = False  # a stream was applied: its topics must be unsubscribed
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._reload_lock = asyncio.Lock()
        self._fingerprint = ""
        self.bound_port: int | None = None
        self.public_port: int | None = None
        self._public_runner: web.AppRunner | None = None
        self._addresses: tuple[str, ...] = settings.dapr_listen_addresses
        self.grpc_port: int | None = None
        self._grpc_server: Any = None
        self.streams = StreamingSubscriptions(
            app_id=self.app_id,
            components=self._components,
            make_dispatcher=self._stream_dispatcher,
            on_change=self._streams_changed,
            # Without an app channel declarative subscriptions are not delivered: no conflict.
            others=lambda: list(self._effective) if self.channel is not None else [],
        )

    # --- RuntimeView -------------------------------------------------------------------------
    def components(self) -> list[LoadedComponent]:
        return list(self._components.values())

    def subscriptions(self) -> list[TopicSubscription]:
        return [*self._effective, *self.streams.subscriptions()]

    def outbound_ready(self) -> bool:
        return all(b.ready() for b in self._brokers.values())

    def outbound_problems(self) -> dict[str, str]:
        return {
            name: self._start_errors.get(name, "the broker does not answer")
            for name, broker in self._brokers.items()
            if not broker.ready()
        }

    def capabilities(self, pubsubname: str) -> list[str]:
        broker = self._brokers.get(pubsubname)
        return sorted(broker.features) if broker is not None else []

    def app_channel_ready(self) -> bool:
        return self.channel is None or self._app_ready

    def extended(self) -> dict[str, str]:
        extended: dict[str, str] = {}
        for name, broker in self._brokers.items():
            component = self._components.get(name)
            if isinstance(broker, KafkaBroker):
                extended[f"kafka.assignment.{name}"] = ",".join(broker.assignment())
            elif component is not None and component.redis is not None:
                extended[f"redis.streams.{name}"] = ",".join(broker.streams())  # type: ignore[attr-defined]
            elif component is not None and component.jetstream is not None:
                extended[f"jetstream.consumers.{name}"] = ",".join(broker.consumers())  # type: ignore[attr-defined]
        return extended

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Load resources, start producers and the HTTP API, then deliveries in the background.

        Raises :class:`ResourceError` for a resource the runtime refuses (the caller exits).
        """
        self._fingerprint = _resources_fingerprint(self.settings)
        resources = load_resources(self.settings.resources_paths, app_id=self.app_id)
        await self._apply_components(resources)
        app = create_app(self.settings, self.publisher, self)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._addresses = usable_addresses(self.settings.dapr_listen_addresses, app_id=self.app_id)
        self.bound_port = await bind_sites(
            self._runner, self._addresses, self.settings.dapr_http_port
        )
        log.info(
            "sidecar API listening on %s",
            ", ".join(host_port(a, self.bound_port) for a in self._addresses),
            extra={"app_id": self.app_id},
        )
        if self.settings.dapr_public_port is not None:
            await self._start_public()
        if self.settings.dapr_grpc_port is not None:
            await self._start_grpc(app[EXTENDED_KEY])
        self._tasks.append(asyncio.create_task(self._deliveries_when_app_ready()))
        if self.settings.resources_paths:
            self._tasks.append(asyncio.create_task(self._watch_resources()))

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        """Ordered shutdown; bounded by ``graceful_shutdown_seconds`` plus a small margin."""
        self._stopping.set()
        await stop_tasks(
            self._tasks, what="sidecar background tasks", extra={"app_id": self.app_id}
        )
        grace = self.settings.graceful_shutdown_seconds
        closing = [
            asyncio.ensure_future(s.broker.close(grace_s=grace)) for s in self._started.values()
        ]
        if closing:
            # close() is bounded by grace_s plus each broker's own short steps; this deadline
            # is the net under a broker whose client hangs anyway, so SIGTERM always ends.
            _, late = await asyncio.wait(closing, timeout=grace + BROKER_CLOSE_MARGIN_S)
            if late:
                log.error(
                    "%d broker(s) did not close within %.1f s; exiting anyway",
                    len(late),
                    grace + BROKER_CLOSE_MARGIN_S,
                    extra={"app_id": self.app_id},
                )
                for task in late:
                    task.cancel()
        # The gRPC API stops after the brokers: in-flight stream deliveries need their streams.
        if self._grpc_server is not None:
            await self._grpc_server.stop(1.0)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._public_runner is not None:
            await self._public_runner.cleanup()
        if self.channel is not None:
            await self.channel.close()
        log.info("sidecar stopped", extra={"app_id": self.app_id})

    async def _start_public(self) -> None:
        """Serve the health endpoints on the public port, every interface. Raises ``OSError``
        when an asked-for port cannot be bound; the default port in use is logged and the
        sidecar runs on without it (as the gRPC API's default port)."""
        assert self.settings.dapr_public_port is not None
        runner = web.AppRunner(
            create_public_app(self.settings, self), access_log=None, handle_signals=False
        )
        await runner.setup()
        self._public_runner = runner
        try:
            self.public_port = await bind_sites(runner, [None], self.settings.dapr_public_port)
        except OSError as exc:
            if self.settings.dapr_public_port_explicit:
                raise
            log.error(
                "the public health port is not served: %s; pass --dapr-public-port",
                exc,
                extra={"app_id": self.app_id},
            )
            return
        log.info(
            "health endpoints listening on every interface, port %s",
            self.public_port,
            extra={"app_id": self.app_id},
        )

    async def _start_grpc(self, extended: dict[str, str]) -> None:
        """Serve the Dapr gRPC API. Raises ``OSError`` when an asked-for port cannot be bound;
        Dapr's default port in use is logged and the sidecar runs on without gRPC."""
        servicer = DaprServicer(
            settings=self.settings,
            publisher=self.publisher,
            runtime=self,
            extended=extended,
            streams=self.streams,
        )
        assert self.settings.dapr_grpc_port is not None
        try:
            self._grpc_server, self.grpc_port = await start_grpc_server(
                self.settings, servicer, self.settings.dapr_grpc_port, addresses=self._addresses
            )
        except OSError as exc:
            if self.settings.dapr_grpc_port_explicit:
                raise
            log.error(
                "the Dapr gRPC API is not served: %s; pass --dapr-grpc-port",
                exc,
                extra={"app_id": self.app_id},
            )
            return
        log.info(
            "Dapr gRPC API listening on %s",
            ", ".join(host_port(a, self.grpc_port) for a in self._addresses),
            extra={"app_id": self.app_id},
        )

    # --- components --------------------------------------------------------------------------
    async def _apply_components(self, resources: Resources) -> None:
        """Start new or changed components, close removed ones; keep unchanged ones running."""
        self._declarative = resources.subscriptions
        wanted = resources.components
        for name in list(self._started):
            if (
                name not in wanted
                or _component_fingerprint(wanted[name]) != self._started[name].fingerprint
            ):
                started = self._started.pop(name)
                self._start_errors.pop(name, None)
                self._brokers.pop(name, None)
                self._components.pop(name, None)
                log.info("closing component", extra={"app_id": self.app_id, "pubsubname": name})
                await started.broker.close(grace_s=self.settings.graceful_shutdown_seconds)
        for name, component in wanted.items():
            self._components[name] = component
            if name in self._started:
                continue
            broker = _broker_for(component, self.app_id, self.settings.max_body_size)
            dispatcher = None
            if self.channel is not None:
                dispatcher = self._dispatcher(component, self.channel)
            self._started[name] = _Started(broker, dispatcher, _component_fingerprint(component))
            self._brokers[name] = broker
            self._tasks.append(asyncio.create_task(self._start_broker(name, broker)))

    def _dead_letter_for(self, pubsubname: str):  # type: ignore[no-untyped-def]
        async def dead_letter(topic: str, record):  # type: ignore[no-untyped-def]
            await self.publisher.dead_letter(pubsubname, topic, record)

        return dead_letter

    async def _start_broker(self, name: str, broker: Broker) -> None:
        """Start a broker's producer side, retrying with backoff while the broker is down."""
        delay = 0.2
        while not self._stopping.is_set():
            try:
                await broker.start()
                lacks = [f for f in FEATURES if f not in broker.features]
                log.info(
                    "component ready; features: %s; not supported: %s",
                    ", ".join(sorted(broker.features)) or "-",
                    ", ".join(lacks) or "-",
                    extra={"app_id": self.app_id, "pubsubname": name},
                )
                self._start_errors.pop(name, None)
                async with self._reload_lock:
                    started = self._started.get(name)
                    if started is not None and started.broker is broker:
                        started.connected = True
                        await self._apply_subscriptions()
                return
            except BrokerError as exc:
                self._start_errors[name] = str(exc)
                log.warning(
                    "component %s not ready, retrying in %.1fs: %s",
                    name,
                    delay,
                    exc,
                    extra={"app_id": self.app_id, "pubsubname": name},
                )
            await asyncio.sleep(delay)  # backoff between connection attempts
            delay = min(delay * 2, 10.0)

    # --- subscriptions -----------------------------------------------------------------------
    def _stream_dispatcher(self, pubsubname: str, channel: StreamChannel) -> Dispatcher:
        """The delivery engine of one streaming subscription: the component's retry policy and
        dead-letter path, the stream as app channel (``inbound/grpc/streaming.py``)."""
        return self._dispatcher(self._components[pubsubname], channel)

    def _dispatcher(self, component: LoadedComponent, channel: Any) -> Dispatcher:
        """The delivery engine of one component towards ``channel`` (the app's HTTP or gRPC
        channel, or a streaming subscription): the component's retry policy and dead-letter path."""
        escape = component.kafka.escape_headers if component.kafka is not None else False
        return BulkDispatcher(
            app_id=self.app_id,
            pubsubname=component.name,
            channel=channel,
            retry=_retry_policy(component),
            dead_letter=self._dead_letter_for(component.name),
            escape_headers=escape,
        )

    async def _streams_changed(self) -> None:
        if self._stopping.is_set():
            return
        async with self._reload_lock:
            await self._apply_subscriptions()

    def _handler_for(self, name: str, dispatcher: Dispatcher | None) -> Handler:
        """The broker handler of pubsub ``name``: streamed topics to their stream's engine,
        the others to the app channel's."""
        streams = self.streams

        async def handle(record: Record) -> None:
            streamed = streams.dispatcher(name, record.topic)
            if streamed is not None:
                await streamed.handle(record)
            elif dispatcher is not None:
                await dispatcher.handle(record)
            else:  # unreachable: a topic is consumed only while a channel serves it
                log.error(
                    "record of topic %s has no channel; left unacknowledged",
                    record.topic,
                    extra={
                        "app_id": self.app_id,
                        "pubsubname": name,
                        "topic": record.topic,
                        "partition": record.partition,
                        "offset": record.offset,
                    },
                )
                await asyncio.Event().wait()  # until the partition is revoked

        if isinstance(dispatcher, BulkDispatcher):
            # bulk subscriptions: brokers that batch also use the dispatcher's BatchHandler side
            return BatchingHandler(
                handle, dispatcher, lambda topic: streams.dispatcher(name, topic) is None
            )
        return handle

    async def _deliveries_when_app_ready(self) -> None:
        if self.channel is None:
            log.info("no --app-port: publish only, no deliveries", extra={"app_id": self.app_id})
            self._effective = list(self._declarative)
            return
        await self.channel.wait_until_reachable(self._stopping)
        if self._stopping.is_set():
            return
        # The app channel is ready once the port accepts connections (§1.5); a /dapr/subscribe
        # that keeps failing is retried and logged but does not keep healthz at 500.
        self._app_ready = True
        self._programmatic = await self.channel.discover()
        async with self._reload_lock:
            self._discovered = True
            await self._apply_subscriptions()

    async def _apply_subscriptions(self) -> None:
        self._effective = effective_subscriptions(
            declarative=self._declarative,
            programmatic=self._programmatic,
            components=self._components,
            app_id=self.app_id,
        )
        streamed = self.streams.consumed()
        if not self._discovered and not streamed and not self._streamed_before:
            return
        self._streamed_before = bool(streamed)
        by_pubsub: dict[str, dict[str, TopicSubscription]] = {name: {} for name in self._started}
        for sub in self._effective if self._discovered else ():
            if sub.pubsubname in by_pubsub:
                by_pubsub[sub.pubsubname][sub.topic] = sub
        for sub in streamed:
            if sub.pubsubname in by_pubsub:
                by_pubsub[sub.pubsubname][sub.topic] = sub
        for name, topics in by_pubsub.items():
            started = self._started[name]
            if not started.connected:
                continue  # subscribed by _start_broker once the broker is connected
            if started.dispatcher is not None:
                started.dispatcher.set_subscriptions(
                    {t: s for t, s in topics.items() if s.type is not SubscriptionType.STREAMING}
                )
            await started.broker.subscribe(set(topics), self._handler_for(name, started.dispatcher))
            waiting = (
                started.broker.waiting()  # type: ignore[attr-defined]
                if self._components[name].jetstream is not None
                else {}
            )
            if topics:  # a topic whose stream is missing is not called subscribed (logged apart)
                log.info(
                    "subscribed to %s%s",
                    sorted(set(topics) - set(waiting)),
                    f"; not consuming yet: {sorted(waiting)}" if waiting else "",
                    extra={"app_id": self.app_id, "pubsubname": name},
                )
        self.streams.end_streams_of_removed(self._started)
        self.streams.prune(
            {(name, topic) for name, topics in by_pubsub.items() for topic in topics}
        )

    # --- hot reload --------------------------------------------------------------------------
    async def _watch_resources(self) -> None:
        while not self._stopping.is_set():
            await asyncio.sleep(
                self.settings.resources_poll_interval_s
            )  # poll period, not an event
            fingerprint = _resources_fingerprint(self.settings)
            if fingerprint == self._fingerprint:
                continue
            self._fingerprint = fingerprint
            await self.reload()

    async def reload(self) -> None:
        """Re-read the resources folders and apply the difference. A bad resource keeps the
        running configuration and logs which file and field is wrong."""
        try:
            resources = load_resources(self.settings.resources_paths, app_id=self.app_id)
        except ResourceError as exc:
            log.error(
                "resources changed but are invalid; keeping the running configuration: %s",
                exc,
                extra={"app_id": self.app_id},
            )
            return
        async with self._reload_lock:
            await self._apply_components(resources)
            await self._apply_subscriptions()
        log.info("resources reloaded", extra={"app_id": self.app_id})


async def _serve(settings: SidecarSettings) -> int:
    sidecar = Sidecar(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, sidecar.request_stop)
    if settings.metrics_port is not None:
        try:
            metrics.serve(settings.metrics_port, namespace=settings.namespace)
        except OSError as exc:
            log.error(
                "cannot serve metrics on port %s: %s",
                settings.metrics_port,
                exc,
                extra={"app_id": settings.app_id},
            )
            return 2
    tracing.configure(settings.app_id)  # spans only with OTEL_EXPORTER_OTLP_ENDPOINT set
    try:
        await sidecar.start()
    except ResourceError as exc:
        log.error("refusing to start: %s", exc, extra={"app_id": settings.app_id})
        await sidecar.stop()
        return 2
    except OSError as exc:
        log.error(
            "cannot serve the API (HTTP port %s, public port %s): %s",
            settings.dapr_http_port,
            settings.dapr_public_port,
            exc,
            extra={"app_id": settings.app_id},
        )
        await sidecar.stop()
        return 2
    await sidecar.wait_stopped()
    await sidecar.stop()
    tracing.shutdown()
    return 0


def run_sidecar(settings: SidecarSettings) -> int:
    """Run a sidecar until SIGTERM/SIGINT; returns the process exit code (2: refused to start)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(_serve(settings))
    return uvloop.run(_serve(settings))

"""Start the operator: ``tidings operator [flags]`` → :func:`main`, or
``kopf run -m tidings.operator.kopf_entry`` (``kopf_entry.py``).

Wiring only: settings (``settings.py``) → API clients and kopf login → the injector
(``injection.py``), the watch handlers and the writing worker (``handlers.py``), leader election
(``leadership.py``) → ``kopf.operator``. Logs are one JSON object a line by default, carrying the
``extra`` fields (app_id, namespace, ...) of each call.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import kopf

from .handlers import Reconciler, register_handlers
from .injection import AdmissionServer, register_injector
from .leadership import LeaderElector
from .metrics import serve as serve_metrics
from .settings import OperatorSettings, SettingsError, parse_settings

__all__ = ["JsonFormatter", "api_client", "main", "register_operator", "run_operator"]

log = logging.getLogger(__name__)

_RECORD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, then the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                out[key] = (
                    value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
                )
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(settings: OperatorSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if settings.log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # kopf logs every watch event at DEBUG and every handler call at INFO: keep its own
    # lines for warnings unless debugging
    logging.getLogger("kopf").setLevel(max(root.level, logging.INFO))
    logging.getLogger("kopf.objects").setLevel(max(root.level, logging.WARNING))


def api_client(settings: OperatorSettings) -> Any:
    """A ``kubernetes.client.ApiClient`` from ``settings.kubeconfig`` or in-cluster config."""
    from kubernetes import client, config

    if settings.kubeconfig:
        return config.new_client_from_config(config_file=settings.kubeconfig)
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def _connection_info(api: Any) -> kopf.ConnectionInfo:
    cfg = api.configuration
    token = None
    auth = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
    if auth:
        token = auth.split(" ", 1)[1] if auth.lower().startswith("bearer ") else auth
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


def _report_exit(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("%s stopped: %r", task.get_name(), task.exception(), exc_info=task.exception())


def register_operator(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> Reconciler:
    """Register everything the operator does on ``registry``.

    The API clients are made at start-up (an ``on.startup`` handler), so registering reads no
    credentials; login hands kopf the same credentials the writers use.
    """
    reconciler = Reconciler(
        core=None,
        custom=None,
        leader=LeaderElector(None, namespace="", name="", identity=""),
        resync_interval_s=settings.resync_interval_s,
    )
    state: dict[str, Any] = {}

    def ensure_api() -> Any:
        if "api" not in state:
            state["api"] = api_client(settings)
        return state["api"]

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return _connection_info(ensure_api())

    @kopf.on.startup(registry=registry)
    async def start(settings: kopf.OperatorSettings, **_: Any) -> None:  # noqa: A002
        from kubernetes import client

        configure_kopf(settings)
        api = ensure_api()
        reconciler.core = client.CoreV1Api(api)
        reconciler.custom = client.CustomObjectsApi(api)
        le = operator_settings.leader_election
        if not le.standalone:
            reconciler.leader = LeaderElector(
                client.CoordinationV1Api(api),
                namespace=le.lease_namespace,
                name=le.lease_name,
                identity=le.identity,
                lease_duration_s=le.lease_duration_s,
                renew_interval_s=le.renew_interval_s,
            )
        state["tasks"] = [
            asyncio.create_task(reconciler.leader.run(), name="leader-election"),
            asyncio.create_task(reconciler.run(), name="app-config-worker"),
        ]
        for task in state["tasks"]:
            task.add_done_callback(_report_exit)
        log.info(
            "operator started",
            extra={
                "sidecar_image": operator_settings.injector.sidecar_image,
                "webhook_port": operator_settings.webhook.port,
                "standalone": le.standalone,
                "namespaces": ",".join(operator_settings.namespaces) or "*",
            },
        )

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        tasks = state.pop("tasks", [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    operator_settings = settings

    def configure_kopf(kopf_settings: kopf.OperatorSettings) -> None:
        wh = operator_settings.webhook
        if wh.cert_file is None:
            raise SettingsError(
                "the webhook needs --webhook-cert-file/--webhook-key-file "
                "(TIDINGS_WEBHOOK_CERT_FILE/TIDINGS_WEBHOOK_KEY_FILE)"
            )
        kopf_settings.admission.server = AdmissionServer(
            addr=wh.addr,
            port=wh.port,
            host=wh.host,
            certfile=wh.cert_file,
            pkeyfile=wh.key_file,
            cafile=wh.ca_file,
        )
        kopf_settings.admission.managed = None  # the chart owns the webhook configuration
        kopf_settings.peering.standalone = True  # leader election is ours (leadership.py)
        kopf_settings.posting.enabled = False  # Events are posted by the reconciler only
        kopf_settings.watching.reconnect_backoff = 1.0
        # No CRD/namespace watching for discovery: the chart installs the CRDs first, and this
        # keeps RBAC to what the operator itself uses.
        kopf_settings.scanning.disabled = True

    register_injector(registry, settings.injector)
    register_handlers(registry, reconciler)
    return reconciler


async def run_operator(
    settings: OperatorSettings,
    *,
    registry: kopf.OperatorRegistry | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """Run until ``stop_flag`` is set (or the task is cancelled)."""
    registry = registry if registry is not None else kopf.OperatorRegistry()
    register_operator(registry, settings)
    await kopf.operator(
        registry=registry,
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        ready_flag=ready_flag,
        stop_flag=stop_flag,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``tidings operator``: parse flags, configure logging, run until SIGTERM/SIGINT."""
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv)
    except SettingsError as exc:
        print(f"tidings operator: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    if settings.metrics_port:
        try:
            serve_metrics(settings.metrics_port)
        except OSError as exc:
            log.error("cannot serve metrics on port %s: %s", settings.metrics_port, exc)
            return 2

    async def _run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_operator(settings, stop_flag=stop)

    try:
        asyncio.run(_run())
    except SettingsError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

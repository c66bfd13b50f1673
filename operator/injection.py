"""The sidecar injector: a thin kopf mutating-admission handler around ``sidecar_patch.py``.

For a Pod CREATE (dapr/dapr ``pkg/injector/service/handler.go``): decide from the annotations
(``annotations.py``) whether to inject, build the patched pod with the pure
:func:`~.sidecar_patch.patch_pod` and let kopf turn the difference into the JSON patch.
Deprecated or defaulted inputs become AdmissionReview ``warnings``; a malformed annotation
refuses the pod with HTTP-style code 400 and a message naming the annotation, and so does a pod
that brings its own ``daprd`` container. The image is the operator's configured sidecar image;
a pod's ``dapr.io/sidecar-image`` is honoured only when the operator allows it.

:class:`AdmissionServer` is kopf's ``WebhookServer`` with stricter request handling: a request
that is not a well-formed AdmissionReview gets a 400/415 with a message instead of a 500, and an
unexpected failure is answered as a refusal naming the pod, never a traceback.
:func:`webhook_configuration` builds the MutatingWebhookConfiguration the chart installs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp.web
import kopf

from .annotations import (
    APP_ID,
    ENABLED,
    LEGACY_ID,
    LOG_LEVEL,
    SIDECAR_IMAGE,
    AnnotationError,
    injection_requested,
    parse_sidecar_config,
)
from .metrics import ADMISSION_LATENCY, ADMISSION_REQUESTS, admission_outcome
from .settings import InjectorSettings
from .sidecar_patch import INJECTED_LABEL, SIDECAR_CONTAINER, patch_pod

__all__ = [
    "WEBHOOK_ID",
    "AdmissionServer",
    "InjectionRefused",
    "admission_problem",
    "decide",
    "register_injector",
    "webhook_configuration",
]

log = logging.getLogger(__name__)

WEBHOOK_ID = "inject-sidecar"
"""kopf serves the handler at ``<root>/inject-sidecar``: the webhook's URL path."""


class InjectionRefused(ValueError):
    """A pod that asks for a sidecar but cannot safely get one (it brings its own ``daprd``)."""


def decide(
    pod: Mapping[str, Any], settings: InjectorSettings
) -> tuple[dict[str, Any] | None, list[str]]:
    """The patched pod (``None``: leave it alone) and the warnings for the AdmissionReview.

    Pure. Raises :class:`AnnotationError` for malformed annotations and
    :class:`InjectionRefused` for a pod that brings its own ``daprd`` container (one this
    webhook injected, labelled ``dapr.io/sidecar-injected``, is rebuilt on re-invocation).
    ``settings.default_api_token_secret`` (the chart's ``sidecar.apiTokenSecret``) applies to
    pods without ``dapr.io/api-token-secret``.
    """
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    if not injection_requested(annotations):
        return None, []
    labels = metadata.get("labels") or {}
    containers = (pod.get("spec") or {}).get("containers") or []
    if labels.get(INJECTED_LABEL) != "true" and any(
        isinstance(c, dict) and c.get("name") == SIDECAR_CONTAINER for c in containers
    ):
        # The pod author wrote their own daprd. Merging ours into it kept whatever they put
        # there (privileged, runAsUser 0, capabilities, envFrom, lifecycle hooks) next to the
        # broker credentials; skipping it (Dapr's choice) would run their container as the
        # sidecar. Neither is safe: the pod is refused with what to do instead.
        raise InjectionRefused(
            f"the pod already has a container named {SIDECAR_CONTAINER!r} and asks for the "
            f"tidings sidecar ({ENABLED}, {APP_ID} or {LEGACY_ID}); remove or rename that "
            f"container (the injector adds {SIDECAR_CONTAINER} itself), or set "
            f'{ENABLED}: "false" to run it without injection'
        )
    config = parse_sidecar_config(pod)
    if config.api_token_secret is None and settings.default_api_token_secret:
        config = dataclasses.replace(config, api_token_secret=settings.default_api_token_secret)
    # The operator's defaults (the chart's sidecar.logLevel / sidecar.resources) under the pod's
    # own annotations, one quantity at a time.
    resources = {
        section: {
            **settings.sidecar_resources.get(section, {}),
            **config.resources.get(section, {}),
        }
        for section in ("requests", "limits")
    }
    config = dataclasses.replace(
        config,
        resources={k: v for k, v in resources.items() if v},
        log_level=config.log_level if LOG_LEVEL in annotations else settings.sidecar_log_level,
    )
    warnings = list(config.warnings)
    image = settings.sidecar_image
    if config.sidecar_image is not None:
        if settings.allow_sidecar_image_annotation:
            image = config.sidecar_image
        else:
            warnings.append(
                f"{SIDECAR_IMAGE} is ignored: this operator injects "
                f"{settings.sidecar_image} (allowSidecarImageAnnotation is off)"
            )
    patched = patch_pod(
        dict(pod),
        config,
        image=image,
        pull_policy=settings.sidecar_image_pull_policy,
        otlp_endpoint=settings.sidecar_otlp_endpoint,
    )
    return patched, warnings


def register_injector(registry: kopf.OperatorRegistry, settings: InjectorSettings) -> None:
    """Register the Pod CREATE mutating handler on ``registry``."""

    @kopf.on.mutate("pods", id=WEBHOOK_ID, operations=["CREATE"], registry=registry)
    def inject_sidecar(
        body: kopf.Body, patch: kopf.Patch, warnings: list[str], namespace: str | None, **_: Any
    ) -> None:
        pod = json.loads(json.dumps(dict(body)))
        meta = pod.get("metadata") or {}
        who = (
            f"{namespace or meta.get('namespace') or ''}/"
            f"{meta.get('name') or meta.get('generateName') or '?'}"
        )
        try:
            patched, notes = decide(pod, settings)
        except AnnotationError as exc:
            log.info("refused pod %s: %s", who, exc, extra={"pod": who, "annotation": exc.key})
            raise kopf.AdmissionError(f"tidings sidecar injector: {exc}", code=400) from None
        except InjectionRefused as exc:
            log.info("refused pod %s: %s", who, exc, extra={"pod": who})
            raise kopf.AdmissionError(f"tidings sidecar injector: {exc}", code=400) from None
        warnings.extend(notes)
        if patched is None:
            return

        def replace(raw: dict[str, Any]) -> None:
            raw.clear()
            raw.update(patched)

        patch.fns.append(replace)
        app_id = patched["metadata"]["labels"]["dapr.io/app-id"]
        log.info("injecting daprd into pod %s", who, extra={"pod": who, "app_id": app_id})


def admission_problem(review: Any) -> str | None:
    """Why ``review`` is not an AdmissionReview for a Pod we can answer, or ``None`` if it is."""
    if not isinstance(review, dict):
        return "the body is not a JSON object"
    if review.get("kind") != "AdmissionReview":
        return f"kind is {review.get('kind')!r}, expected 'AdmissionReview'"
    request = review.get("request")
    if not isinstance(request, dict):
        return "request is missing or not an object"
    if not isinstance(request.get("uid"), str) or not request["uid"]:
        return "request.uid is missing"
    resource = request.get("resource")
    if not isinstance(resource, dict) or not all(
        isinstance(resource.get(k), str) for k in ("group", "version", "resource")
    ):
        return "request.resource must have group, version and resource"
    if not isinstance(request.get("userInfo"), dict):
        return "request.userInfo is missing"
    if not isinstance(request.get("object"), dict) and not isinstance(
        request.get("oldObject"), dict
    ):
        return "request.object is missing"
    return None


def _review_response(
    review: Mapping[str, Any], *, allowed: bool, code: int, message: str
) -> dict[str, Any]:
    return {
        "apiVersion": review.get("apiVersion") or "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": (review.get("request") or {}).get("uid", ""),
            "allowed": allowed,
            "status": {"code": code, "message": message},
        },
    }


def _status(code: int, message: str) -> aiohttp.web.Response:
    return aiohttp.web.json_response(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": code,
            "message": message,
        },
        status=code,
    )


class AdmissionServer(kopf.WebhookServer):
    """kopf's HTTPS webhook server with well-formedness checks in front of the handlers."""

    @staticmethod
    async def _serve(fn: Any, request: aiohttp.web.Request) -> aiohttp.web.Response:
        started = time.perf_counter()
        response = await AdmissionServer._serve_checked(fn, request)
        outcome = admission_outcome(response.status, response.body)  # type: ignore[arg-type]
        ADMISSION_REQUESTS.labels(outcome).inc()
        ADMISSION_LATENCY.labels(outcome).observe(time.perf_counter() - started)
        return response

    @staticmethod
    async def _serve_checked(fn: Any, request: aiohttp.web.Request) -> aiohttp.web.Response:
        if request.content_type != "application/json":
            return _status(
                415, f"Content-Type must be application/json, not {request.content_type!r}"
            )
        try:
            review = json.loads(await request.text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _status(400, f"the body is not JSON: {exc}")
        except RecursionError:
            return _status(400, "the body is not JSON an AdmissionReview can be: nested too deep")
        problem = admission_problem(review)
        if problem is not None:
            log.warning("malformed AdmissionReview: %s", problem)
            if (
                isinstance(review, dict)
                and isinstance(review.get("request"), dict)
                and review["request"].get("uid")
            ):
                return aiohttp.web.json_response(
                    _review_response(
                        review,
                        allowed=False,
                        code=400,
                        message=f"malformed AdmissionReview: {problem}",
                    )
                )
            return _status(400, f"malformed AdmissionReview: {problem}")
        try:
            # kopf's own serving (handler selection, AdmissionError → refusal) on the body
            # already read and checked.
            return await kopf.WebhookServer._serve(fn, _Replay(request, review))  # type: ignore[arg-type]
        except aiohttp.web.HTTPException as exc:
            return _status(exc.status, exc.reason or "bad admission request")
        except Exception as exc:
            log.exception("admission failed")
            return aiohttp.web.json_response(
                _review_response(
                    review,
                    allowed=False,
                    code=500,
                    message=f"tidings sidecar injector failed: {type(exc).__name__}: {exc}",
                )
            )


class _Replay:
    """The parts of an aiohttp request kopf's ``_serve`` reads, with the body already read."""

    def __init__(self, request: aiohttp.web.Request, review: Any) -> None:
        self.headers = request.headers
        self.transport = request.transport
        self.match_info = request.match_info
        self._text = json.dumps(review)

    async def text(self) -> str:
        return self._text


def webhook_configuration(
    *,
    name: str,
    client_config: Mapping[str, Any],
    failure_policy: str = "Ignore",
    namespace_selector: Mapping[str, Any] | None = None,
    object_selector: Mapping[str, Any] | None = None,
    timeout_seconds: int = 10,
) -> dict[str, Any]:
    """The ``admissionregistration.k8s.io/v1`` MutatingWebhookConfiguration for the injector.

    ``client_config`` is a webhook ``clientConfig`` (``service`` or ``url``, plus ``caBundle``),
    whose path must end in ``/inject-sidecar``. Dapr's choices (§6.4): Pod CREATE only,
    ``sideEffects: None``, ``reinvocationPolicy: IfNeeded``, ``failurePolicy`` default
    ``Ignore`` (a down injector lets pods start without a sidecar rather than blocking them).
    """
    webhook: dict[str, Any] = {
        "name": "sidecar-injector.tidings.dapr.io",
        "admissionReviewVersions": ["v1", "v1beta1"],
        "clientConfig": dict(client_config),
        "rules": [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ],
        "failurePolicy": failure_policy,
        "matchPolicy": "Equivalent",
        "reinvocationPolicy": "IfNeeded",
        "sideEffects": "None",
        "timeoutSeconds": timeout_seconds,
    }
    if namespace_selector:
        webhook["namespaceSelector"] = dict(namespace_selector)
    if object_selector:
        webhook["objectSelector"] = dict(object_selector)
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "tidings"}},
        "webhooks": [webhook],
    }

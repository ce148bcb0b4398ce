"""Kubernetes access of the operator: the API connection, the policy's Secret and Events.

Owns how the operator reaches the API server (a kubeconfig file or the in-cluster
ServiceAccount, for both the kubernetes client and kopf's login), which namespace it watches by
default, reading the database URL from the policy's Secret with the operator's own credentials,
and posting the Events that ``reaper.status`` decides on. Status patches are not here: kopf
applies a handler's ``patch.status`` through the status subresource after the handler returns.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass
from pathlib import Path

import kopf
import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException

from threadkeeper.reaper.status import Event, EventType, Stalled, StallReason

SECRET_TIMEOUT = 10.0


@dataclass(frozen=True)
class Connection:
    """How to reach the API server: a kubeconfig file, or the in-cluster ServiceAccount."""

    kubeconfig: Path | None

    def configuration(self) -> kubernetes.client.Configuration:
        config = kubernetes.client.Configuration()
        if self.kubeconfig is not None:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(self.kubeconfig), client_configuration=config
            )
        else:
            try:
                kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=config
                )
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                    client_configuration=config
                )
        return config

    def login(self, settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
        if self.kubeconfig is None:
            # In a pod: kopf's own reader re-reads the (rotated) token on every re-login.
            info = kopf.login_with_service_account(settings=settings)
            if info is not None:
                return info
        config = self.configuration()
        header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix(
            "authorization"
        )
        scheme, _, token = (header or "").rpartition(" ")
        return kopf.ConnectionInfo(
            server=config.host,
            ca_path=config.ssl_ca_cert,
            insecure=not config.verify_ssl,
            scheme=scheme or None,
            token=token or None,
            certificate_path=config.cert_file,
            private_key_path=config.key_file,
        )


def default_namespace(kubeconfig: Path | None) -> str | None:
    """The in-cluster ServiceAccount's namespace, else the kubeconfig context's namespace."""
    in_cluster = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    if kubeconfig is None and in_cluster.exists():
        return in_cluster.read_text(encoding="utf-8").strip() or None
    try:
        _, active = kubernetes.config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig) if kubeconfig else None
        )
    except (kubernetes.config.ConfigException, OSError):
        return None
    namespace = (active or {}).get("context", {}).get("namespace")
    return str(namespace) if namespace else None


class SecretReader:
    """Reads one key of a Secret with the operator's credentials (sync client, in a thread)."""

    def __init__(self, configuration: kubernetes.client.Configuration) -> None:
        self._api = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))

    def _read(self, namespace: str, name: str, key: str) -> str:
        try:
            secret = self._api.read_namespaced_secret(
                name, namespace, _request_timeout=SECRET_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                raise Stalled(StallReason.SECRET_NOT_FOUND, f"Secret {name} not found") from None
            if exc.status == 403:
                raise Stalled(
                    StallReason.SECRET_FORBIDDEN, f"the operator may not read Secret {name}"
                ) from None
            raise
        data = secret.data or {}
        if key not in data:
            raise Stalled(StallReason.SECRET_KEY_MISSING, f"Secret {name} has no key {key!r}")
        try:
            return base64.b64decode(data[key]).decode().strip()
        except (binascii.Error, UnicodeDecodeError):
            raise Stalled(
                StallReason.SECRET_KEY_MISSING, f"Secret {name} key {key!r} is not text"
            ) from None

    async def read(self, namespace: str, name: str, key: str) -> str:
        return await asyncio.to_thread(self._read, namespace, name, key)


def post(body: kopf.Body, event: Event | None) -> None:
    """Post ``event`` about the policy (queued; kopf's poster sends it). None posts nothing."""
    if event is None:
        return
    if event.type is EventType.WARNING:
        kopf.warn(body, reason=event.reason, message=event.message)
    else:
        # kopf.info would be filtered by settings.posting.level (WARNING); kopf.event is not.
        kopf.event(body, type=event.type.value, reason=event.reason, message=event.message)

"""Dispatchers that deliver to an `execute_node` outside this process: http, cloud_tasks,
pubsub and azure_queue (DESIGN.md §4). Each cloud SDK is imported on first use only.

`dispatch` hands a delivery to a small thread pool, so a 200-wide fan-out is sent
concurrently instead of one request after another. An entrypoint wraps its call to the
engine in `with dispatcher.batch():`, which does not return before every delivery made
inside it is acknowledged — by the execute_node server (http) or by the queue (the
others) — so an invocation never answers while a child it spawned is still unsent.
A delivery is retried with backoff; one that keeps failing is given up: the node is
marked failed with the error (`give_up`), so its parent and the swarm still end.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator
from urllib.parse import urlsplit

from .config import ConfigError, SwarmBlueprint, without_userinfo
from .dispatch import Dispatcher, PooledDispatcher, local_dispatcher
from .models import NodeBlueprint

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("swarm")
REMOTE = ("http", "cloud_tasks", "pubsub", "azure_queue")


class PermanentDeliveryError(Exception):
    """The target refused the delivery for good (e.g. 401, 404): retrying cannot help."""


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def make_dispatcher(blueprint: SwarmBlueprint) -> Dispatcher:
    """The blueprint's dispatcher; `SWARM_DISPATCHER` and `SWARM_EXECUTE_NODE_URL` override it
    (`SWARM_DISPATCHER_RUNNER` overrides the blueprint's `runner` when it is loaded)."""
    kind = os.environ.get("SWARM_DISPATCHER") or blueprint.dispatcher.kind
    url = os.environ.get("SWARM_EXECUTE_NODE_URL") or blueprint.dispatcher.url
    concurrency = min(blueprint.dispatcher.concurrency, 64)
    # `runner` is for kind "local". Named beside a remote kind in the same place (the blueprint, or
    # the environment) it is a mistake; a blueprint's local runner under a deployment's
    # SWARM_DISPATCHER, or a shell's SWARM_DISPATCHER_RUNNER under a remote blueprint, is not used.
    runner_from_env = bool(os.environ.get("SWARM_DISPATCHER_RUNNER"))
    if kind in REMOTE and "runner" in blueprint.dispatcher.model_fields_set and runner_from_env == bool(os.environ.get("SWARM_DISPATCHER")):
        source = "SWARM_DISPATCHER_RUNNER" if runner_from_env else "the blueprint"
        raise ConfigError(f"[dispatcher] runner (from {source}) is a setting of kind \"local\" only; this dispatcher is {kind!r}")
    if kind == "local":
        return local_dispatcher(blueprint.dispatcher)
    if kind == "http":
        return HttpDispatcher(url, concurrency=concurrency)
    if kind == "cloud_tasks":
        return CloudTasksDispatcher(url, queue=os.environ.get("SWARM_TASKS_QUEUE", ""), concurrency=concurrency)
    if kind == "pubsub":
        return PubSubDispatcher(os.environ.get("SWARM_PUBSUB_TOPIC", ""), concurrency=concurrency)
    if kind == "azure_queue":
        return AzureQueueDispatcher(os.environ.get("SWARM_AZURE_QUEUE", ""), concurrency=concurrency)
    raise ConfigError(f"unknown dispatcher {kind!r}: use one of local, {', '.join(REMOTE)}")


def payload(swarm_id: str, blueprint: NodeBlueprint) -> bytes:
    """What every remote dispatcher delivers: the body `execute_node` accepts. UTF-8, not \\uXXXX
    escapes, which made a long goal in a non-Latin script three times the size (too big for a queue)."""
    return json.dumps({"swarm_id": swarm_id, "node": blueprint.model_dump(mode="json")}, ensure_ascii=False).encode()


def give_up(engine: Engine, swarm_id: str, blueprint: NodeBlueprint, error: str, *, claim: int | None = None) -> bool:
    """Fail a node whose delivery keeps failing (see `Engine.fail_node`), and log it."""
    if not engine.fail_node(swarm_id, blueprint, error, claim=claim):
        return False
    log.error(json.dumps({"severity": "ERROR", "swarm_id": swarm_id, "node_id": blueprint.node_id, "gave_up": error}))
    return True


class _Batch:
    """The deliveries made inside one `batch()`; deliveries made while giving one up join it."""

    def __init__(self) -> None:
        self.futures: list[Future] = []
        self.lock = threading.Lock()

    def add(self, future: Future) -> None:
        with self.lock:
            self.futures.append(future)

    def pop(self) -> Future | None:
        with self.lock:
            return self.futures.pop(0) if self.futures else None


class RemoteDispatcher(PooledDispatcher):
    """Concurrent, acknowledged, retried deliveries; subclasses only say how to `send` one."""

    kind = "remote"

    def __init__(self, *, concurrency: int = 16, attempts: int | None = None, backoff_s: float = 0.25, max_backoff_s: float = 8.0):
        super().__init__(concurrency, name=f"swarm-{self.kind}")
        self.attempts = max(1, attempts or env_int("SWARM_DELIVERY_ATTEMPTS", 6))
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._local = threading.local()

    def send(self, swarm_id: str, blueprint: NodeBlueprint) -> None:
        """Deliver once; return when the target acknowledged it, raise otherwise."""
        raise NotImplementedError

    # --- batching ------------------------------------------------------------------

    def _batch(self) -> _Batch:
        batch = getattr(self._local, "batch", None)
        if batch is None:
            batch = self._local.batch = _Batch()
        return batch

    @contextmanager
    def batch(self) -> Iterator[list[str]]:
        """Collect this thread's deliveries; on exit wait until all are acknowledged or given up.
        Yields the list that receives the errors of those given up."""
        outer = getattr(self._local, "batch", None)
        batch = self._local.batch = _Batch()
        errors: list[str] = []
        try:
            yield errors
        finally:
            try:
                errors.extend(self._drain(batch))
            finally:
                self._local.batch = outer

    def _drain(self, batch: _Batch) -> list[str]:
        errors = []
        while (future := batch.pop()) is not None:
            if (error := future.result()) is not None:
                errors.append(error)
        return errors

    def flush(self) -> list[str]:
        """Wait for the deliveries this thread made outside any `batch()`."""
        return self._drain(self._batch())

    def dispatch(self, swarm_id: str, blueprint: NodeBlueprint) -> None:
        batch = self._batch()
        self._started()
        batch.add(self._pool.submit(self._deliver, batch, swarm_id, blueprint))

    # --- one delivery ----------------------------------------------------------------

    def _deliver(self, batch: _Batch, swarm_id: str, blueprint: NodeBlueprint) -> str | None:
        self._local.batch = batch  # giving up may resume the parent: that delivery joins this batch
        try:
            last: Exception | None = None
            for attempt in range(1, self.attempts + 1):
                try:
                    self.send(swarm_id, blueprint)
                    return None
                except PermanentDeliveryError as exc:
                    last = exc
                    break
                except Exception as exc:  # network, 5xx, 429, the queue's own errors
                    last = exc
                    if attempt < self.attempts:
                        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                        time.sleep(delay * random.uniform(0.5, 1.0))
            error = f"delivery of {blueprint.node_id} (round {blueprint.round}) via {self.kind} failed after {attempt} attempt(s): {last}"
            self.errors.append(f"{swarm_id} {error}")
            try:
                assert self.engine is not None, "dispatcher not bound to an engine"
                give_up(self.engine, swarm_id, blueprint, error)
            except Exception as exc:  # the store is down too: the record stays, `swarm resume` retries
                log.error("could not mark %s/%s failed: %s", swarm_id, blueprint.node_id, exc)
            return error
        finally:
            self._local.batch = None
            self._finished()


class HttpDispatcher(RemoteDispatcher):
    """POST to the `execute_node` URL (functions-framework, Cloud Run functions).

    It asks for an early acknowledgment (`Prefer: respond-async`): the server answers
    202 once it has validated the delivery and then runs the node while the response
    stays open. The dispatcher stops at the status line, so a parent waits for its
    children's acknowledgments, never for their runs (or their subtrees)."""

    kind = "http"

    def __init__(self, url: str, *, concurrency: int = 16, timeout_s: float = 30.0, **kw):
        if not url:
            raise ConfigError("the http dispatcher needs the execute_node URL: set SWARM_EXECUTE_NODE_URL or [dispatcher] url")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"execute_node URL must be http(s)://HOST[:PORT]/PATH, got {without_userinfo(url)!r}")
        self.url, self._parts, self.timeout_s = url, parts, timeout_s
        super().__init__(concurrency=concurrency, **kw)

    def send(self, swarm_id: str, blueprint: NodeBlueprint) -> None:
        p = self._parts
        conn_cls = http.client.HTTPSConnection if p.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(p.hostname, p.port, timeout=self.timeout_s)
        headers = {"Content-Type": "application/json", "Prefer": "respond-async"}
        if token := os.environ.get("SWARM_API_TOKEN"):
            headers["Authorization"] = f"Bearer {token}"
        try:
            conn.request("POST", (p.path or "/") + (f"?{p.query}" if p.query else ""), payload(swarm_id, blueprint), headers)
            resp = conn.getresponse()  # the status line is the acknowledgment; the body is the run
            if resp.status in (200, 202):
                return
            detail = resp.read(2000).decode(errors="replace") if resp.status != 202 else ""
            if 400 <= resp.status < 500 and resp.status not in (408, 429):
                raise PermanentDeliveryError(f"HTTP {resp.status}: {detail}")
            raise ConnectionError(f"HTTP {resp.status}: {detail}")
        finally:
            conn.close()


class CloudTasksDispatcher(RemoteDispatcher):
    """One Cloud Tasks HTTP task per delivery, named after swarm, node and round so the
    queue itself rejects a duplicate (ALREADY_EXISTS counts as delivered). The task
    carries an OIDC token for `SWARM_TASKS_SERVICE_ACCOUNT` when set (IAM-fronted
    function), else the bearer `SWARM_API_TOKEN`. `CLOUD_TASKS_EMULATOR_HOST` points it
    at an emulator."""

    kind = "cloud_tasks"

    def __init__(self, url: str, *, queue: str, concurrency: int = 16, **kw):
        if not url or not queue:
            raise ConfigError(
                "the cloud_tasks dispatcher needs SWARM_EXECUTE_NODE_URL and "
                "SWARM_TASKS_QUEUE=projects/PROJECT/locations/REGION/queues/QUEUE"
            )
        self.url, self.queue = url, queue
        self._client = None
        self._lock = threading.Lock()
        super().__init__(concurrency=concurrency, **kw)

    def client(self):
        with self._lock:
            if self._client is None:
                from google.cloud import tasks_v2

                emulator = os.environ.get("CLOUD_TASKS_EMULATOR_HOST")
                if emulator:
                    import grpc
                    from google.auth.credentials import AnonymousCredentials
                    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

                    channel = grpc.insecure_channel(emulator)
                    self._client = tasks_v2.CloudTasksClient(
                        transport=CloudTasksGrpcTransport(channel=channel, credentials=AnonymousCredentials())
                    )
                else:
                    self._client = tasks_v2.CloudTasksClient()
            return self._client

    @staticmethod
    def task_id(swarm_id: str, blueprint: NodeBlueprint) -> str:
        return f"{swarm_id}-{blueprint.node_id.replace('.', '_')}-r{blueprint.round}"

    def send(self, swarm_id: str, blueprint: NodeBlueprint) -> None:
        from google.api_core import exceptions as gexc

        request: dict = {"http_method": "POST", "url": self.url, "headers": {"Content-Type": "application/json"}, "body": payload(swarm_id, blueprint)}
        if account := os.environ.get("SWARM_TASKS_SERVICE_ACCOUNT"):
            request["oidc_token"] = {"service_account_email": account, "audience": self.url}
        elif token := os.environ.get("SWARM_API_TOKEN"):
            request["headers"]["Authorization"] = f"Bearer {token}"
        task = {"name": f"{self.queue}/tasks/{self.task_id(swarm_id, blueprint)}", "http_request": request}
        try:
            self.client().create_task(parent=self.queue, task=task, timeout=30)
        except gexc.AlreadyExists:
            return  # the queue already holds (or held) this very delivery
        except (gexc.InvalidArgument, gexc.NotFound, gexc.PermissionDenied) as exc:
            raise PermanentDeliveryError(str(exc)) from exc


class PubSubDispatcher(RemoteDispatcher):
    """Publish to a topic whose push subscription POSTs to `execute_node`; `publish` is
    acknowledged once Pub/Sub has stored the message. `PUBSUB_EMULATOR_HOST` is honoured
    by the SDK itself."""

    kind = "pubsub"

    def __init__(self, topic: str, *, concurrency: int = 16, **kw):
        if not topic.startswith("projects/") or "/topics/" not in topic:
            raise ConfigError("the pubsub dispatcher needs SWARM_PUBSUB_TOPIC=projects/PROJECT/topics/TOPIC")
        self.topic = topic
        self._publisher = None
        self._lock = threading.Lock()
        super().__init__(concurrency=concurrency, **kw)

    def publisher(self):
        with self._lock:
            if self._publisher is None:
                from google.cloud import pubsub_v1

                self._publisher = pubsub_v1.PublisherClient()
            return self._publisher

    def send(self, swarm_id: str, blueprint: NodeBlueprint) -> None:
        from google.api_core import exceptions as gexc

        attrs = {"swarm_id": swarm_id, "node_id": blueprint.node_id, "round": str(blueprint.round)}
        try:
            self.publisher().publish(self.topic, payload(swarm_id, blueprint), **attrs).result(timeout=60)
        except (gexc.NotFound, gexc.PermissionDenied, gexc.InvalidArgument) as exc:
            raise PermanentDeliveryError(str(exc)) from exc


class AzureQueueDispatcher(RemoteDispatcher):
    """Send to an Azure Storage Queue read by the Azure Functions queue trigger (base64
    messages, the host's default). Connection: `SWARM_AZURE_QUEUE_CONNECTION`, else
    `SWARM_AZURE_QUEUE_ACCOUNT_URL` with the managed identity (azure-identity), else the
    Functions host's own `AzureWebJobsStorage` connection string."""

    kind = "azure_queue"
    MAX_MESSAGE = 48 * 1024  # 64 KiB queue limit, less base64's expansion

    def __init__(self, queue: str, *, concurrency: int = 16, **kw):
        if not queue:
            raise ConfigError("the azure_queue dispatcher needs SWARM_AZURE_QUEUE (the queue name)")
        self.queue = queue
        self._client = None
        self._lock = threading.Lock()
        super().__init__(concurrency=concurrency, **kw)

    def client(self):
        with self._lock:
            if self._client is None:
                from azure.storage.queue import QueueClient, TextBase64EncodePolicy

                encode = TextBase64EncodePolicy()
                conn = os.environ.get("SWARM_AZURE_QUEUE_CONNECTION")
                url = os.environ.get("SWARM_AZURE_QUEUE_ACCOUNT_URL")
                if conn or (not url and (conn := os.environ.get("AzureWebJobsStorage"))):
                    self._client = QueueClient.from_connection_string(conn, self.queue, message_encode_policy=encode)
                elif url:  # the managed identity, with a data role on this one queue
                    from azure.identity import DefaultAzureCredential

                    self._client = QueueClient(url, self.queue, credential=DefaultAzureCredential(), message_encode_policy=encode)
                else:
                    raise ConfigError("azure_queue: set SWARM_AZURE_QUEUE_CONNECTION, AzureWebJobsStorage or SWARM_AZURE_QUEUE_ACCOUNT_URL")
            return self._client

    def send(self, swarm_id: str, blueprint: NodeBlueprint) -> None:
        body = payload(swarm_id, blueprint)
        if len(body) > self.MAX_MESSAGE:
            raise PermanentDeliveryError(f"node blueprint is {len(body)} bytes; an Azure queue message holds {self.MAX_MESSAGE}")
        try:
            self.client().send_message(body.decode())
        except ConfigError as exc:
            raise PermanentDeliveryError(str(exc)) from exc


def decode_pubsub_push(envelope: dict) -> tuple[bytes, int | None]:
    """The message a Pub/Sub push request carries, and its delivery attempt when known."""
    message = envelope["message"]
    data = base64.b64decode(message.get("data", ""), validate=True)
    attempt = envelope.get("deliveryAttempt")
    return data, attempt if isinstance(attempt, int) else None

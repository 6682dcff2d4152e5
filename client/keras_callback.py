"""Join a federated task from your own `model.fit`: `FederatedCallback`.

    model.fit(ds, epochs=E, callbacks=[FederatedCallback(task="digits", client_id="silo-0",
                                                         stack_config="stack.json")])

Before the first batch the callback waits for the task's global model and loads it. At
each boundary (`every="epoch"`, or every N steps) it submits the model's weights as this
silo's update and loads the next global model: in an async task the newest one (the
server's go-ahead after absorbing this update, or a newer model), in a sync task the next
round's. When the task ends it loads the final model and stops `fit`; when `fit` ends
first, the silo stops cleanly (a notice it holds comes back for its next run).

It is the silo client, not a second one: `client.run.run_client` runs in a background
thread with its own event loop (poller, heartbeats, downloads, uploads, records, all as
`fedasync client run` does them; heartbeats go on while `fit` runs), and its trainer is a
bridge that hands each global model to `fit` and waits for the weights of the next
boundary. Imports Keras: use it where TensorFlow is installed (the tf extra).
"""

from __future__ import annotations

import asyncio
import queue
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np
import structlog

from client.config import ClientConfig
from client.data import Dataset
from client.ports import AwsClientPorts
from client.run import run_client
from client.state import ClientReport
from client.trainers.base import TrainerSetupError, TrainResult
from client.trainers.keras_model import get_weights, set_weights
from client.trainers.plugin import check_model
from fedasync.aws.session import AwsContext, Credentials
from fedasync.core import codec
from fedasync.core.codec import Weights, spec_of
from fedasync.core.messages import GlobalModelNotice

log = structlog.get_logger()

# the bridge trains on what `fit` feeds it, not on arrays the client holds
_NO_DATA = Dataset(np.zeros((0, 0), np.float32), np.zeros(0, np.int64))


@dataclass(frozen=True)
class _Global:
    weights: Weights


@dataclass(frozen=True)
class _End:
    report: ClientReport | None
    final: Weights | None = None
    error: BaseException | None = None


class _Bridge:
    """The `Trainer` the client loop drives: `fit` is called (on the silo's training
    thread) with a global model; it hands it to Keras and returns the next boundary's."""

    name = "keras-callback"

    def __init__(self) -> None:
        self.to_keras: queue.Queue[_Global | _End] = queue.Queue()
        self.from_keras: queue.Queue[TrainResult] = queue.Queue()
        self.closed = threading.Event()

    def init_weights(self, seed: int) -> Weights:
        raise TrainerSetupError("FederatedCallback trains the task's model; it makes none")

    def check_data(self, weights: Weights, x: Any, source: str) -> None:
        """The data stays with `model.fit`, which checks it against the model itself."""

    def fit(self, weights: Weights, x: Any, y: Any, *, epochs: int, seed: int) -> TrainResult:
        self.to_keras.put(_Global(weights))
        while not self.closed.is_set():
            try:
                return self.from_keras.get(timeout=0.1)
            except queue.Empty:
                continue
        raise RuntimeError("fit ended before this boundary")  # the run is stopping anyway

    def evaluate(self, weights: Weights, x: Any, y: Any) -> dict[str, float]:
        return {}  # not called: the callback gives the client no held-out arrays


class FederatedCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """`every`: "epoch" or a number of steps between submissions. `batch_size`: examples
    per step, for the FedAvg weight (None: each step counts 1, right when every silo uses
    the same batch size). `stack_config`: the JSON `fedasync local up` wrote (endpoint,
    names, this silo's key); or give `config` (a `ClientConfig`), or `ClientConfig`
    fields as keywords (`endpoint_url=...`, `queue_url=...`, `heartbeat_interval_s=...`).
    `timeout_s`: the longest wait for a global model before `fit` fails."""

    def __init__(
        self,
        task: str | None = None,
        client_id: str | None = None,
        *,
        every: Literal["epoch"] | int = "epoch",
        batch_size: int | None = None,
        stack_config: str | Path | None = None,
        config: ClientConfig | None = None,
        timeout_s: float = 600.0,
        **client_options: Any,
    ) -> None:
        super().__init__()
        if every != "epoch" and not (isinstance(every, int) and every > 0):
            raise ValueError(f"every must be 'epoch' or a positive number of steps, not {every!r}")
        self.cfg = config or _config(task, client_id, stack_config, client_options)
        self.every, self.batch_size, self.timeout_s = every, batch_size, timeout_s
        self.report: ClientReport | None = None
        self.submitted = 0
        self._bridge = _Bridge()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._steps = self._steps_at_boundary = 0
        self._checked = self._done = False

    # -- Keras hooks (the training thread) --

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._thread = threading.Thread(
            target=self._serve, name=f"fedasync-{self.cfg.client_id}", daemon=True
        )
        self._thread.start()
        self._load_next()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._steps += 1
        if isinstance(self.every, int) and self._steps % self.every == 0:
            self._boundary(logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.every == "epoch":
            self._boundary(logs)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._shutdown()

    # -- the boundary --

    def _boundary(self, logs: dict[str, Any] | None) -> None:
        if self._done:
            return
        steps = self._steps - self._steps_at_boundary
        self._steps_at_boundary = self._steps
        metrics = {f"train_{k}": float(v) for k, v in (logs or {}).items()}
        result = TrainResult(get_weights(self.model), steps * (self.batch_size or 1), metrics)
        self._bridge.from_keras.put(result)
        self.submitted += 1
        self._load_next()

    def _load_next(self) -> None:
        try:
            item = self._bridge.to_keras.get(timeout=self.timeout_s)
        except queue.Empty:
            self._shutdown()
            raise TimeoutError(
                f"no global model of task {self.cfg.task_name!r} reached client "
                f"{self.cfg.client_id!r} within {self.timeout_s} s"
            ) from None
        try:
            self._load(item)
        except BaseException:
            self._shutdown()
            raise

    def _load(self, item: _Global | _End) -> None:
        if isinstance(item, _Global):
            if not self._checked:
                check_model(get_weights(self.model), spec_of(item.weights), "FederatedCallback",
                            who=f"model {self.model.name!r}")  # fmt: skip
                self._checked = True
            set_weights(self.model, item.weights)
            return
        self._done, self.report = True, item.report
        if item.error is not None:
            raise item.error
        if item.final is not None:
            set_weights(self.model, item.final)
        self.model.stop_training = True
        log.info("callback.task_ended", submitted=self.submitted)

    def _shutdown(self) -> None:
        """Stop the client (if it still runs), then release a `fit` the bridge holds."""
        if self._thread is None:
            return
        self._started.wait(self.timeout_s)
        if self._thread.is_alive() and self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self.timeout_s)
        self._bridge.closed.set()
        self._thread = None
        while self.report is None and not self._bridge.to_keras.empty():
            item = self._bridge.to_keras.get_nowait()  # what the run did, when fit ended first
            if isinstance(item, _End):
                self.report = item.report

    # -- the client (its own thread and event loop) --

    def _serve(self) -> None:
        try:
            self._bridge.to_keras.put(asyncio.run(self._session()))
        except BaseException as exc:  # handed to the training thread, raised from fit
            self._bridge.to_keras.put(_End(None, error=exc))
        finally:
            self._started.set()

    async def _session(self) -> _End:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._started.set()
        report = await run_client(self.cfg, trainer=self._bridge, data=_NO_DATA,
                                  stop_event=self._stop)  # fmt: skip
        final = None
        if report.outcome == "final" and report.final_notice is not None:
            final = await _download(self.cfg, report.final_notice)
        return _End(report, final)


async def _download(cfg: ClientConfig, notice: GlobalModelNotice) -> Weights:
    """The task's final model, checked against the final notice's SHA-256."""
    secret = cfg.aws_secret_access_key
    key = cfg.aws_access_key_id
    creds = Credentials(key, secret.get_secret_value()) if key and secret else None
    async with AwsContext(cfg.deployment.endpoint_url, cfg.deployment.region, creds) as aws:
        ports = await AwsClientPorts.open(aws, cfg)
        with tempfile.TemporaryDirectory(prefix="fedasync-final-") as tmp:
            path = Path(tmp) / "final.safetensors"
            await ports.download(notice.s3_key, notice.sha256, path, lambda _: None)
            return codec.read_file(path, max_bytes=cfg.max_model_bytes, who="final model")


def _config(
    task: str | None, client_id: str | None, stack_config: str | Path | None,
    options: dict[str, Any],
) -> ClientConfig:  # fmt: skip
    if task is None or client_id is None:
        raise ValueError("FederatedCallback needs task= and client_id= (or config=)")
    from client.cli import locate  # the stack config's reader

    given = {k: options.pop(k, None) for k in ("endpoint_url", "queue_url", "bucket", "table")}
    path = Path(stack_config) if stack_config is not None else None
    located = locate(path, client_id, given)
    return ClientConfig(task_name=task, client_id=client_id, **{**located, **options})

"""Join a task from an existing Keras training script: one callback in `model.fit`.

    fedasync local up --clients silo-0,silo-1 &      # writes .fedasync/stack.json
    fedasync task start --config .fedasync/task.yaml --trainer examples.keras_cnn:factory
    python -m examples.keras_callback --task digits --client-id silo-0 --data digits:0/2

Your script keeps its model, its `tf.data` pipeline and its `fit`; the callback submits
the weights at each epoch's end (or every N steps) and continues from the task's next
global model, until the task ends (then the model holds the final global model).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from client.data import load_data
from client.keras_callback import FederatedCallback
from examples.keras_cnn import build_model
from fedasync import logs


def digits_dataset(spec: str, batch_size: int, seed: int = 0) -> Any:
    """The silo's digits as (8, 8, 1) images in a shuffled, batched `tf.data.Dataset`."""
    data = load_data(spec, seed=seed)
    images = data.x.reshape(-1, 8, 8, 1)
    ds = tf.data.Dataset.from_tensor_slices((images, data.y))
    return ds.shuffle(len(data), seed=seed).batch(batch_size)


def train(
    task: str,
    client_id: str,
    *,
    data: str = "digits:0/2",
    epochs: int = 20,
    every: str | int = "epoch",
    batch_size: int = 16,
    callbacks: list[Any] | None = None,
    **where: Any,
) -> tuple[Any, Any, FederatedCallback]:
    """Build, fit, federate: returns the model (the final global one), the history and
    the callback (its `report` says what the silo did)."""
    keras.utils.set_random_seed(0)
    model = build_model()
    federated = FederatedCallback(
        task=task, client_id=client_id, every=every, batch_size=batch_size, **where
    )
    history = model.fit(
        digits_dataset(data, batch_size),
        epochs=epochs,
        callbacks=[federated, *(callbacks or [])],
        shuffle=False,  # the pipeline shuffles (Keras would only warn it cannot)
        verbose=0,
    )
    return model, history, federated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--data", default="digits:0/2")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--every", default="epoch", help='"epoch" or a number of steps')
    parser.add_argument(
        "--stack-config",
        type=Path,
        default=Path(os.environ.get("FEDASYNC_STACK_CONFIG", ".fedasync/stack.json")),
    )
    args = parser.parse_args()
    logs.configure()  # as `fedasync client run`: JSON lines off a terminal
    every: str | int = args.every if args.every == "epoch" else int(args.every)
    _, history, federated = train(
        args.task, args.client_id, data=args.data, epochs=args.epochs, every=every,
        stack_config=args.stack_config,
    )  # fmt: skip
    report = federated.report
    print(
        f"client {args.client_id!r}, task {args.task!r}: {report.outcome if report else '?'} "
        f"after {len(history.history.get('loss', []))} epoch(s); "
        f"{federated.submitted} update(s) submitted"
    )


if __name__ == "__main__":
    main()

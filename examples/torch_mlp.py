"""A PyTorch MLP on scikit-learn's 8x8 digits, joining a fedasync task as a silo.

Three ways in, one model:

- `factory(spec, options)`: the trainer plugin (`fedasync client run --trainer
  examples.torch_mlp:factory`); the MLP's sizes are read off the task's model spec.
- `python -m examples.torch_mlp init model.safetensors`: the task's initial weights (the
  MLP's state_dict as safetensors), for `fedasync task start --init-model`.
- `python -m examples.torch_mlp run ...`: one silo through the Python API, its data as a
  torch `DataLoader` (what a script with its own training data would do).

The wire names are the state_dict keys: `0.weight` (hidden, 64), `0.bias`, `2.weight`
(10, hidden), `2.bias`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from client.cli import locate
from client.config import ClientConfig
from client.data import DEFAULT_EVAL_FRACTION, from_torch, hold_out, load_data
from client.run import run_client
from client.trainers.torch_trainer import TorchTrainer
from fedasync import logs
from fedasync.core import codec

NUM_FEATURES, NUM_CLASSES, HIDDEN = 64, 10, 32


def mlp(
    features: int = NUM_FEATURES, hidden: int = HIDDEN, classes: int = NUM_CLASSES
) -> nn.Module:
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def _shapes(spec: Any) -> dict[str, tuple[int, ...]]:
    """Tensor shapes by name from a model spec: `codec.TensorSpec`s, or a mapping."""
    if isinstance(spec, Mapping):
        return {name: tuple(getattr(t, "shape", t)) for name, t in spec.items()}
    return {t.name: tuple(t.shape) for t in spec}


def trainer_for(module: nn.Module, options: Mapping[str, Any], loader: Any = None) -> TorchTrainer:
    lr = float(options.get("lr", 0.1))
    return TorchTrainer(
        module,
        loader,
        lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9),
        nn.CrossEntropyLoss(),
        batch_size=int(options.get("batch_size", 32)),
    )


def factory(
    spec: Sequence[Any] | Mapping[str, Any] | None, options: Mapping[str, Any]
) -> TorchTrainer:
    """The plugin: an MLP shaped like the task's model (`0.weight` is (hidden, features),
    `2.weight` (classes, hidden)); without a spec, `options` (or the defaults) size it."""
    if spec:
        shapes = _shapes(spec)
        hidden, features = shapes["0.weight"]
        classes = shapes["2.weight"][0]
    else:
        features = int(options.get("num_features", NUM_FEATURES))
        hidden = int(options.get("hidden", HIDDEN))
        classes = int(options.get("num_classes", NUM_CLASSES))
    return trainer_for(mlp(features, hidden, classes), options)


def init(out: Path, *, hidden: int = HIDDEN, seed: int = 0) -> str:
    """Write the MLP's initial state_dict as safetensors; returns its SHA-256."""
    weights = trainer_for(mlp(hidden=hidden), {}).init_weights(seed)
    return codec.write_file(weights, out, f"initial model {str(out)!r}")


async def run_silo(cfg: ClientConfig, data_spec: str, *, seed: int = 0) -> Any:
    """One silo through the Python API: its examples as a torch DataLoader."""
    train, held = hold_out(load_data(data_spec, seed=seed), DEFAULT_EVAL_FRACTION, seed)
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(train.x), torch.from_numpy(train.y))
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True)
    trainer = trainer_for(mlp(), {}, loader)
    return await run_client(
        cfg,
        trainer=trainer,
        data=from_torch(dataset, f"torch dataset {data_spec!r}"),
        eval_data=held,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.torch_mlp")
    sub = parser.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init", help="write the initial model (safetensors)")
    p_init.add_argument("out", type=Path)
    p_init.add_argument("--seed", type=int, default=0)
    p_run = sub.add_parser("run", help="run one silo with a torch DataLoader")
    env_stack = os.environ.get("FEDASYNC_STACK_CONFIG")  # as `client run`, which `local up` sets
    p_run.add_argument("--stack-config", type=Path, default=env_stack, required=not env_stack)
    p_run.add_argument("--task", required=True)
    p_run.add_argument("--client-id", required=True)
    p_run.add_argument("--data", default="digits")
    p_run.add_argument("--epochs", type=int, default=1)
    p_run.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logs.configure()  # as `client run`: JSON lines on stderr off a TTY
    if args.command == "init":
        print(f"wrote {args.out} sha256={init(args.out, seed=args.seed)}")
        return
    given = {"endpoint_url": None, "queue_url": None, "bucket": None, "table": None}
    located = locate(args.stack_config, args.client_id, given)
    cfg = ClientConfig(
        task_name=args.task, client_id=args.client_id, epochs=args.epochs, seed=args.seed, **located
    )
    report = asyncio.run(run_silo(cfg, args.data, seed=args.seed))
    print(
        f"client {report.client_id!r}, task {report.task_name!r}: {report.outcome}; "
        f"{len(report.updates)} update(s) uploaded"
    )


if __name__ == "__main__":
    main()

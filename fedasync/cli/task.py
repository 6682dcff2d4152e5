"""`fedasync task start|status|stop|resume`: the operator's task commands.

The logic lives in `fedasync.ops` (`taskctl`, `taskstatus`, `taskstop`: plain data in,
plain data out); this module parses flags, runs it and renders the result
(`fedasync.cli.status_view` draws the status table). Errors print one `error: ...` line
and exit 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console

from fedasync import logs
from fedasync.cli.common import Endpoint, Prefix, Region, StackJson, TaskName, fail, resolve, run
from fedasync.cli.status_view import status_table
from fedasync.core import codec
from fedasync.core.codec import Weights
from fedasync.core.config import TaskConfig
from fedasync.core.errors import ConfigError, FedAsyncError
from fedasync.core.initial import check_initial, check_size
from fedasync.ops import taskctl, taskstatus, taskstop

task_app = typer.Typer(
    help="Start, inspect and stop federated tasks on a deployed (or embedded) stack.",
    no_args_is_help=True,
)


def load_task_config(path: Path) -> TaskConfig:
    """YAML (safe_load) to a validated `TaskConfig`; errors name the file and each field."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"task config {str(path)!r} is unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"task config {str(path)!r} must be a YAML mapping of fields")
    try:
        return TaskConfig.parse(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}") from exc


def _initial_model(
    cfg: TaskConfig,
    init_model: Path | None,
    trainer: str,
    seed: int,
    num_features: int,
    num_classes: int,
) -> Weights:
    """The user's weights (`--initial-weights`), else a built-in trainer's; checked once
    against the task (names, dtypes, finite, max_model_bytes) before anything is created."""
    if init_model is not None:
        who = f"initial weights {str(init_model)!r}"
        if not init_model.is_file():
            raise ConfigError(f"{who} does not exist (or is not a file)")
        check_size(init_model.stat().st_size, cfg, who)  # a model too big is refused unread
        weights = codec.read_file(init_model, who=who)
    else:
        from client.trainers import get_trainer  # the operator may not have the client

        model = get_trainer(trainer, num_features=num_features, num_classes=num_classes)
        weights, who = model.init_weights(seed), f"the {trainer} trainer's initial model"
    check_initial(weights, cfg, who)
    return weights


@task_app.command("start")
def start_command(
    config: Annotated[Path, typer.Option("--config", help="Task config YAML (TaskConfig).")],
    endpoint: Endpoint = None,
    prefix: Prefix = "fedasync",
    region: Region = None,
    stack_config: StackJson = None,
    init_model: Annotated[
        Path | None,
        typer.Option(
            "--initial-weights",
            "--init-model",
            help="The task's model (.safetensors, e.g. from `fedasync model export`): its "
            "tensor names, shapes and dtypes are what every update must match.",
        ),
    ] = None,
    trainer: Annotated[
        str,
        typer.Option(help="Without --initial-weights: numpy or keras initialises the model."),
    ] = "numpy",
    seed: Annotated[int, typer.Option(help="Seed of the initial model.")] = 0,
    num_features: Annotated[int, typer.Option(help="Model inputs (digits: 64).")] = 64,
    num_classes: Annotated[int, typer.Option(help="Model classes.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a task from a YAML config and start its execution (idempotent).

    Example: fedasync task start --config task.yaml --initial-weights model.safetensors
    """
    logs.configure(level="WARNING")
    stack = resolve(endpoint, prefix, region, stack_config)
    try:
        cfg = load_task_config(config)
        initial = _initial_model(cfg, init_model, trainer, seed, num_features, num_classes)
    except (FedAsyncError, ValueError, ImportError) as exc:
        raise fail(str(exc)) from exc
    out = run(stack, lambda aws: taskctl.start(aws, stack, cfg, initial))
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(f"task {out['task_name']!r} started ({out['mode']})")
    typer.echo(f"execution: {out['execution_arn']}")


@task_app.command("status")
def status_command(
    task_name: TaskName,
    endpoint: Endpoint = None,
    prefix: Prefix = "fedasync",
    region: Region = None,
    stack_config: StackJson = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (for machines).")] = False,
) -> None:
    """Show mode, version or round, alive clients, accepted/rejected updates, execution.

    Example: fedasync task status digits --json
    """
    logs.configure(level="WARNING")
    stack = resolve(endpoint, prefix, region, stack_config)
    out = run(stack, lambda aws: taskstatus.status(aws, stack, task_name))
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    Console().print(status_table(out))


@task_app.command("stop")
def stop_command(
    task_name: TaskName,
    endpoint: Endpoint = None,
    prefix: Prefix = "fedasync",
    region: Region = None,
    stack_config: StackJson = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the execution to end.")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """End a task now; its current global model becomes final.safetensors.

    The task's (async) or open round's (sync) wait is answered {"finished": true}: the
    execution ends SUCCEEDED. Before any wait has started it is stopped (ABORTED).

    Example: fedasync task stop digits
    """
    logs.configure(level="WARNING")
    stack = resolve(endpoint, prefix, region, stack_config)
    out = run(stack, lambda aws: taskstop.stop(aws, stack, task_name, wait_s=wait))
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
    else:
        typer.echo(
            f"task {task_name!r}: {out['how'].replace('_', ' ')}; final version "
            f"{out['final_version']} ({out['final_key']}), reason {out['reason']!r}, "
            f"execution {out['execution']['status']}"
        )
    if out["execution"]["status"] == "RUNNING":
        raise fail(
            f"the execution of task {task_name!r} is still RUNNING after {wait} s: the final "
            "model is published and its wait was answered (or stopped); waiting for the state "
            f"machine to end it. Run `fedasync task stop {task_name}` again to check and retry"
        )


@task_app.command("resume")
def resume_command(
    task_name: TaskName,
    endpoint: Endpoint = None,
    prefix: Prefix = "fedasync",
    region: Region = None,
    stack_config: StackJson = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Continue a task whose execution was aborted, timed out or failed, in a new execution.

    Sync: the next round after the last one closed; async: the head, its counters and
    buffer as stored. The ledger runs on across attempts (`fedasync task status` lists them).

    Example: fedasync task resume digits
    """
    logs.configure(level="WARNING")
    stack = resolve(endpoint, prefix, region, stack_config)
    out = run(stack, lambda aws: taskctl.resume(aws, stack, task_name))
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    typer.echo(
        f"task {task_name!r} resumed: attempt {out['attempt']} from version {out['version']} "
        f"(the last attempt ended {out['after']})"
    )
    typer.echo(f"execution: {out['execution_arn']}")


__all__ = ["load_task_config", "task_app"]

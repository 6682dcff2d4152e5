"""`fedasync task start|status|stop` and `fedasync local up`: the operator's commands.

The logic lives in `fedasync.ops.taskctl` (plain data in, plain data out); this module parses
flags, runs it and renders the result. Errors print one `error: ...` line and exit 1.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.table import Table

from fedasync import logs
from fedasync.aws.session import AwsContext, Credentials, refusal_message
from fedasync.core import codec
from fedasync.core.codec import Weights
from fedasync.core.config import TaskConfig
from fedasync.core.errors import ConfigError, FedAsyncError
from fedasync.core.evals import describe_means
from fedasync.core.initial import check_initial, check_size
from fedasync.deployment import Deployment
from fedasync.local.principals import CLIENT_PREFIX
from fedasync.local.server import LocalMotoServer
from fedasync.local.stack import EmbeddedStack
from fedasync.ops import taskctl
from fedasync.resources import ENV_ENDPOINT_URL, ClientSpec

T = TypeVar("T")

task_app = typer.Typer(
    help="Start, inspect and stop federated tasks on a deployed (or embedded) stack.",
    no_args_is_help=True,
)
local_app = typer.Typer(help="Run the embedded stack for separate client processes.")

Endpoint = Annotated[
    str | None,
    typer.Option(
        "--endpoint", envvar=ENV_ENDPOINT_URL, help="AWS endpoint URL; default: real AWS."
    ),
]
Prefix = Annotated[
    str, typer.Option(envvar="FEDASYNC_PREFIX", help="Stack prefix naming the resources.")
]
Region = Annotated[str | None, typer.Option(envvar="AWS_DEFAULT_REGION", help="AWS region.")]
StackJson = Annotated[
    Path | None,
    typer.Option(
        "--stack-config",
        envvar="FEDASYNC_STACK_CONFIG",
        help="JSON of resolved resource names (CDK outputs, or what `local up` wrote); "
        "overrides the names derived from --prefix.",
    ),
]
TaskName = Annotated[str, typer.Argument(help="The task's name (task_name in its config).")]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _run(stack: Deployment, work: Callable[[AwsContext], Awaitable[T]]) -> T:
    """Run one operation on an `AwsContext`; known failures become `error:` and exit 1."""

    async def main() -> T:
        async with AwsContext(
            stack.endpoint_url, stack.region, stack.credentials("operator")
        ) as aws:
            return await work(aws)

    try:
        return asyncio.run(main())
    except FedAsyncError as exc:
        raise _fail(exc.message) from exc
    except ClientError as exc:
        raise _fail(
            refusal_message(exc, "operator" if stack.credentials("operator") else None)
        ) from exc
    except BotoCoreError as exc:
        where = stack.endpoint_url or f"AWS ({stack.region})"
        raise _fail(f"cannot reach {where}: {exc}") from exc


def _stack(
    endpoint: str | None, prefix: str, region: str | None, stack_config: Path | None
) -> Deployment:
    try:
        return taskctl.resolve_stack(
            endpoint_url=endpoint, prefix=prefix, region=region, stack_config=stack_config
        )
    except FedAsyncError as exc:
        raise _fail(exc.message) from exc


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
    stack = _stack(endpoint, prefix, region, stack_config)
    try:
        cfg = load_task_config(config)
        initial = _initial_model(cfg, init_model, trainer, seed, num_features, num_classes)
    except (FedAsyncError, ValueError, ImportError) as exc:
        raise _fail(str(exc)) from exc
    out = _run(stack, lambda aws: taskctl.start(aws, stack, cfg, initial))
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
    stack = _stack(endpoint, prefix, region, stack_config)
    out = _run(stack, lambda aws: taskctl.status(aws, stack, task_name))
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    Console().print(_status_table(out))


def _status_table(out: dict[str, Any]) -> Table:
    table = Table(title=f"fedasync task: {out['task_name']}", show_header=False)
    if out["mode"] == "async":
        progress = f"{out['absorbed']} update(s) absorbed, max_versions {out['max_versions']}"
    elif out["round"] is None:
        progress = f"{out['rounds_closed']} of {out['rounds']} rounds closed"
    else:
        progress = f"round {out['round']} open, {out['rounds_closed']} of {out['rounds']} closed"
    clients, updates, execution = out["clients"], out["updates"], out["execution"]
    rows = [
        ("mode", f"{out['mode']} ({out['strategy']})"),
        ("status", out["status"] + (f": {out['cause']}" if out.get("cause") else "")),
        ("version", f"{out['version']}; {progress}"),
        ("finished", _finished(out)),
        ("alive clients", f"{', '.join(clients['alive']) or '-'} of {len(clients['expected'])}"),
        ("accepted updates", str(updates["accepted"])),
        ("rejected updates", _by_reason(updates["rejections"])),
        ("pending updates", str(updates["pending"])),
    ]
    rows += [
        (f"  {r['client_id']} {r['update_id']}", f"{r['reason']}: {r['detail']}")
        for r in updates["rejections"][-_SHOWN_REJECTIONS:]
    ]
    evaluation = out.get("evaluation") or []
    rows += [
        ("silo evaluation" if i == 0 else "", describe_means(entry, out["mode"]))
        for i, entry in enumerate(evaluation[-_SHOWN_EVALUATIONS:])
    ]
    refused = out.get("global_refused")
    if refused:
        rows.append(
            (
                "refused global model",
                f"{refused['reason']} at version {refused['version']} "
                f"({updates.get('discarded', 0)} accepted update(s) discarded): {refused['detail']}",
            )
        )
    rows.append(("execution", f"{execution['status']} (attempt {out['attempt']})"))
    rows += [
        (
            f"  attempt {a['attempt']}",
            f"{a['ended']}" + (f": {a['cause']}" if a.get("cause") else ""),
        )
        for a in out["attempts"]
        if a.get("ended")
    ]
    if execution.get("cause"):
        rows.append(("execution cause", str(execution["cause"])))
    for key, value in rows:
        table.add_row(key, value)
    return table


_SHOWN_REJECTIONS = 3  # the table shows the latest few; --json lists them all
_SHOWN_EVALUATIONS = 3  # rounds / versions: the latest few (--json: every one)


def _finished(out: dict[str, Any]) -> str:
    if not out["finished"]:
        return "-"
    return f"{out['finished']} (final version {out['final_version']})"


def _by_reason(rejections: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for r in rejections:
        counts[str(r["reason"])] = counts.get(str(r["reason"]), 0) + 1
    detail = ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))
    return f"{len(rejections)} ({detail})" if rejections else "0"


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
    stack = _stack(endpoint, prefix, region, stack_config)
    out = _run(stack, lambda aws: taskctl.stop(aws, stack, task_name, wait_s=wait))
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
    else:
        typer.echo(
            f"task {task_name!r}: {out['how'].replace('_', ' ')}; final version "
            f"{out['final_version']} ({out['final_key']}), reason {out['reason']!r}, "
            f"execution {out['execution']['status']}"
        )
    if out["execution"]["status"] == "RUNNING":
        raise _fail(
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
    stack = _stack(endpoint, prefix, region, stack_config)
    out = _run(stack, lambda aws: taskctl.resume(aws, stack, task_name))
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    typer.echo(
        f"task {task_name!r} resumed: attempt {out['attempt']} from version {out['version']} "
        f"(the last attempt ended {out['after']})"
    )
    typer.echo(f"execution: {out['execution_arn']}")


@local_app.callback()
def local_group() -> None:
    """Run the embedded stack for separate client processes."""


@local_app.command("up")
def up_command(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Loopback port.")] = 4566,
    prefix: Annotated[str, typer.Option(help="Stack prefix naming the resources.")] = "fedasync",
    clients: Annotated[
        str, typer.Option(help="Comma-separated client ids (one queue each, fixed at start).")
    ] = "silo-0,silo-1",
    stack_config: Annotated[
        Path, typer.Option(help="Where to write the resolved names (JSON).")
    ] = Path(".fedasync/stack.json"),
    region: Annotated[str, typer.Option(help="Region the resources live in.")] = "us-east-1",
) -> None:
    """Run the embedded stack in the foreground until Ctrl-C or SIGTERM.

    Prints the environment and the commands that let `fedasync task ...` and
    `fedasync client run` in other terminals (separate processes) use it.

    Example: fedasync local up --port 4566 --clients silo-0,silo-1
    """
    logs.configure()
    ids = tuple(c.strip() for c in clients.split(",") if c.strip())
    try:
        spec = Deployment(
            prefix=prefix, region=region, clients=tuple(ClientSpec(client_id=c) for c in ids)
        )
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    if not _port_free(port):
        raise _fail(f"port {port} on 127.0.0.1 is in use; choose another with --port")
    asyncio.run(_serve(spec, port, stack_config.resolve()))


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as the server binds: a restart must not trip over the last run's TIME_WAIT
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def _serve(spec: Deployment, port: int, stack_json: Path) -> None:
    """Moto on the port, the stack on it, the banner on stdout; then wait for a signal."""
    server = LocalMotoServer(port=port)
    url = await asyncio.to_thread(server.start)
    try:
        async with EmbeddedStack(spec, endpoint_url=url) as stack:
            task_yaml = await asyncio.to_thread(_write_files, stack.endpoints, stack_json)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            operator = stack.credentials("operator")
            logs.remember_secret(operator.secret_access_key)  # never in a log line
            typer.echo(_banner(spec, url, stack_json, task_yaml, operator))
            await stop.wait()
            typer.echo("stopping the embedded stack…")
    finally:
        await asyncio.to_thread(server.stop)
    typer.echo("stopped")


def _write_files(deployment: Deployment, stack_json: Path) -> Path:
    """The stack JSON for `--stack-config`, and an example task config beside it. Of the
    keys, only those a user's process signs with: the silos' and the operator's (the
    server's roles stay inside the stack)."""
    handed_out = {
        name: key
        for name, key in deployment.principals.items()
        if name == "operator" or name.startswith(CLIENT_PREFIX)
    }
    deployment.model_copy(update={"principals": handed_out}).save(stack_json)
    task_yaml = stack_json.parent / "task.yaml"
    task_yaml.write_text(yaml.safe_dump(_example_task(deployment), sort_keys=False))
    return task_yaml


def _example_task(spec: Deployment) -> dict[str, Any]:
    return {
        "task_name": "digits",
        "mode": "sync",
        "clients": list(spec.client_ids),
        "rounds": 3,
        "round_timeout_s": 300,
    }


def _banner(
    spec: Deployment, url: str, stack_json: Path, task_yaml: Path, operator: Credentials
) -> str:
    # The stack enforces IAM per principal: invented keys are refused. The fedasync CLIs
    # sign with the stack config's keys (each silo's, the operator's); these exports are
    # the operator's, for the aws CLI or boto3 in those terminals. They are printed on the
    # user's terminal only, for a throwaway local stack, and masked in every log line.
    env = {
        ENV_ENDPOINT_URL: url,
        "FEDASYNC_PREFIX": spec.prefix,
        "FEDASYNC_STACK_CONFIG": str(stack_json),
        "AWS_ACCESS_KEY_ID": operator.access_key_id,
        "AWS_SECRET_ACCESS_KEY": operator.secret_access_key,
        "AWS_DEFAULT_REGION": spec.region,
    }
    n = len(spec.client_ids)
    lines = [
        f"embedded stack {spec.prefix!r} on {url} (clients: {', '.join(spec.client_ids)})",
        f"stack config: {stack_json}",
        "a new, empty stack: nothing of an earlier `fedasync local up` is kept (tasks, models,",
        "queues); a silo still running from one serves the tasks started here",
        "",
        "# in every other terminal (the fedasync CLIs sign with the stack config's keys; the",
        "# AWS_* keys are the operator's, for the aws CLI / boto3: this local stack's own,",
        "# shown on this terminal only and never logged; each silo's are in the stack config):",
        *(f"export {k}={v}" for k, v in env.items()),
        "",
        f"# start a task (example config: {task_yaml}):",
        f"fedasync task start --config {task_yaml}",
        "# one silo per terminal:",
        *(
            f"fedasync client run --task digits --client-id {c} --trainer numpy "
            f"--data digits:{i}/{n}"
            for i, c in enumerate(spec.client_ids)
        ),
        "# watch, then stop early if you like:",
        "fedasync task status digits",
        "fedasync task stop digits",
        "",
        "ready: serving until Ctrl-C or SIGTERM",
    ]
    return "\n".join(lines)


__all__ = ["load_task_config", "local_app", "task_app"]

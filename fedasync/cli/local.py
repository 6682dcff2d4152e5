"""`fedasync local up`: the embedded stack in the foreground, for separate client processes."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from fedasync import logs
from fedasync.aws.session import Credentials
from fedasync.cli.common import fail
from fedasync.deployment import Deployment
from fedasync.local.principals import CLIENT_PREFIX
from fedasync.local.server import LocalMotoServer
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import ENV_ENDPOINT_URL, ClientSpec

local_app = typer.Typer(help="Run the embedded stack for separate client processes.")


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
        raise fail(str(exc)) from exc
    if not _port_free(port):
        raise fail(f"port {port} on 127.0.0.1 is in use; choose another with --port")
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
            task_yaml = await asyncio.to_thread(write_files, stack.endpoints, stack_json)
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


def write_files(deployment: Deployment, stack_json: Path) -> Path:
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


__all__ = ["local_app", "write_files"]

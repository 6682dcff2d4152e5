"""`fedasync replay` and `fedasync events export`: the ledger on the command line."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.table import Table

from fedasync import logs
from fedasync.core.errors import FedAsyncError
from fedasync.core.ledger import Event, parse_ledger
from fedasync.core.replay import ReplayResult, replay
from fedasync.deployment import Deployment

events_app = typer.Typer(help="Export a task's event ledger.", no_args_is_help=True)
out_console = Console()
err_console = Console(stderr=True)

EndpointOpt = Annotated[
    str | None,
    typer.Option(
        envvar="FEDASYNC_ENDPOINT_URL",
        help="AWS endpoint (the embedded stack's URL); omit for real AWS.",
    ),
]
PrefixOpt = Annotated[
    str, typer.Option(envvar="FEDASYNC_PREFIX", help="Resource prefix of the stack.")
]
BucketOpt = Annotated[
    str | None,
    typer.Option(envvar="FEDASYNC_BUCKET", help="Model bucket (default: from the prefix)."),
]

StackConfigOpt = Annotated[
    Path | None,
    typer.Option(
        envvar="FEDASYNC_STACK_CONFIG",
        help="Stack JSON (`local up`'s, or `cdk deploy --outputs-file`'s); its operator "
        "keys sign the calls.",
    ),
]


async def _export(
    name: str, *, stack: Deployment, out: Path, objects: Path | None
) -> tuple[list[Event], int]:
    from fedasync.aws.session import AwsContext
    from fedasync.ops.events import export_ledger, export_objects, write_ledger
    from fedasync.server.store import ServerStore

    async with AwsContext(stack.endpoint_url, stack.region, stack.credentials("operator")) as aws:
        store = ServerStore(aws, stack)
        events = await export_ledger(store, name)
        write_ledger(events, out)
        copied = await export_objects(store, events, objects) if objects is not None else 0
    return events, copied


@events_app.command("export")
def export(
    name: Annotated[str, typer.Argument(help="Task name.")],
    out: Annotated[
        Path | None, typer.Option(help="Ledger file (default NAME.events.jsonl).")
    ] = None,
    objects: Annotated[
        Path | None, typer.Option(help="Also copy the objects a replay needs into DIR.")
    ] = None,
    endpoint: EndpointOpt = None,
    prefix: PrefixOpt = "fedasync",
    table: Annotated[str | None, typer.Option(envvar="FEDASYNC_TABLE")] = None,
    bucket: BucketOpt = None,
    stack_config: StackConfigOpt = None,
) -> None:
    """Write a task's ledger (every update, verdict, round and version) from its table.

    Example: fedasync events export digits-fedavg --endpoint http://127.0.0.1:5000 --objects objs
    """
    logs.configure(level="WARNING")
    target = out or Path(f"{name}.events.jsonl")
    try:
        from fedasync.ops.tasklookup import resolve_stack

        stack = resolve_stack(
            endpoint_url=endpoint, prefix=prefix, region=None, stack_config=stack_config
        )
        events, copied = asyncio.run(
            _export(
                name,
                stack=stack.model_copy(
                    update={"table": table or stack.table, "bucket": bucket or stack.bucket}
                ),
                out=target,
                objects=objects,
            )
        )
    except (FedAsyncError, ClientError, BotoCoreError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    out_console.print(f"wrote {len(events)} events to {target}" + (
        f"; {copied} objects to {objects}" if objects is not None else ""))  # fmt: skip


async def _fetch_objects(events: list[Event], stack: Deployment, bucket: str, folder: Path) -> None:
    from fedasync.aws.session import AwsContext
    from fedasync.ops.events import export_objects
    from fedasync.server.store import ServerStore

    # as the other operator commands: the operator's keys from the stack config, else the
    # default chain (AWS_PROFILE & co. on AWS)
    async with AwsContext(stack.endpoint_url, stack.region, stack.credentials("operator")) as aws:
        place = stack.model_copy(update={"bucket": bucket})
        await export_objects(ServerStore(aws, place), events, folder)


def _print_result(result: ReplayResult) -> None:
    table = Table(title=f"replay of {result.task_name} ({result.mode}/{result.strategy})")
    for column in ("version", "recorded SHA-256", "rebuilt SHA-256", ""):
        table.add_column(column)
    for check in result.checks:
        mark = "[green]same[/]" if check.ok else "[red]DIFFERS[/]"
        table.add_row(str(check.version), (check.recorded or "-")[:16], check.rebuilt[:16], mark)
    err_console.print(table)
    for problem in result.problems:
        err_console.print(f"[red]problem:[/] {problem}")


def replay_command(
    events_file: Annotated[Path, typer.Argument(metavar="EVENTS", help="A ledger (events.jsonl).")],
    objects: Annotated[
        Path | None,
        typer.Option(
            help="Folder holding the objects by S3 key (default: objects/ beside EVENTS)."
        ),
    ] = None,
    endpoint: EndpointOpt = None,
    bucket: BucketOpt = None,
    prefix: Annotated[
        str | None,
        typer.Option(envvar="FEDASYNC_PREFIX", help="Bucket from this stack prefix."),
    ] = None,
    stack_config: StackConfigOpt = None,
) -> None:
    """Rebuild every global version from a ledger; exit 1 if any differs from the record.

    Objects come from --objects DIR, or from the bucket at --endpoint (a real deployment
    when no endpoint is given but --bucket is), or from objects/ next to the ledger. The
    bucket is read as the operator: with the stack config's operator keys, else with the
    default credential chain.

    Example: fedasync replay runs/digits-fedavg/events.jsonl
    """
    logs.configure(level="WARNING")
    from fedasync.ops.events import folder_loader

    try:
        with events_file.open(encoding="utf-8") as lines:
            events = parse_ledger(lines)
        with tempfile.TemporaryDirectory(prefix="fedasync-replay-") as scratch:
            if objects is None and (endpoint or bucket or prefix or stack_config):
                from fedasync.ops.tasklookup import resolve_stack

                stack = resolve_stack(
                    endpoint_url=endpoint,
                    prefix=prefix or "fedasync",
                    region=None,
                    stack_config=stack_config,
                )
                task = next((e for e in events if e["kind"] == "task"), {})
                named = Deployment(prefix=prefix).bucket if prefix else None
                if stack_config is not None:
                    named = named or stack.bucket
                source = bucket or named or task.get("bucket") or Deployment().bucket
                objects = Path(scratch)
                asyncio.run(_fetch_objects(events, stack, str(source), objects))
            folder = objects or events_file.parent / "objects"
            result = replay(events, folder_loader(folder))
    except (FedAsyncError, OSError, ClientError, BotoCoreError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _print_result(result)
    typer.echo(f"final sha256: {result.final_sha256} (version {result.final_version})")
    if not result.ok:
        err_console.print(
            f"[red]replay differs:[/] {len(result.mismatches)} version(s), "
            f"{len(result.problems)} problem(s); recorded final {result.final_recorded}"
        )
        raise typer.Exit(1)
    err_console.print(f"[green]all {len(result.checks)} versions rebuilt byte for byte[/]")

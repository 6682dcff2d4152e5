"""The `fedasync` command: demo, client, task control, local stack, replay."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedasync import logs
from fedasync.cli.common import fail
from fedasync.cli.status_view import describe_privacy
from fedasync.core.errors import ConfigError

app = typer.Typer(
    help="Cloud-native asynchronous federated learning on AWS serverless.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold task tokens
)
console = Console(stderr=True)


def _mount_client() -> None:
    from client.cli import client_app

    app.add_typer(client_app, name="client")


@app.command()
def demo(
    mode: Annotated[str, typer.Option(help="sync (FedAvg rounds) or async (per update).")] = "sync",
    strategy: Annotated[
        str | None,
        typer.Option(
            help="sync: fedavg | median | trimmed_mean | krum; async: fedasync | fedbuff "
            "(default: fedavg / fedasync)."
        ),
    ] = None,
    strategy_option: Annotated[
        list[str] | None,
        typer.Option(help="KEY=VALUE of the strategy's options, e.g. beta=0.2 (repeatable)."),
    ] = None,
    server_optimizer: Annotated[
        str | None,
        typer.Option(
            help="avgm | adam | yogi | adagrad, with options after a colon, e.g. "
            "adam:lr=0.03,tau=0.001 (sync rounds, or FedBuff's step)."
        ),
    ] = None,
    proximal_mu: Annotated[
        float, typer.Option(min=0, help="FedProx: the silos' proximal term mu (0: off).")
    ] = 0.0,
    dp: Annotated[
        str | None,
        typer.Option(
            help="Differential privacy: central | local, with options after a colon, e.g. "
            "central:noise_multiplier=1.0,clip_norm=1.0,target_epsilon=10,delta=1e-5."
        ),
    ] = None,
    attackers: Annotated[
        int,
        typer.Option(
            min=0, help="The last N silos poison their updates (sign-flipped, scaled by 10)."
        ),
    ] = 0,
    clients: Annotated[int, typer.Option(min=1, max=64, help="Number of silos.")] = 5,
    rounds: Annotated[int, typer.Option(min=1, help="Sync rounds.")] = 10,
    max_versions: Annotated[
        int, typer.Option(min=1, help="Async: stop at this global version.")
    ] = 60,
    trainer: Annotated[str, typer.Option(help="numpy (softmax regression) or keras.")] = "numpy",
    stragglers: Annotated[
        str | None, typer.Option(help="lognormal:SIGMA slows each update by a seeded factor.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds the split, the model and the stragglers.")] = 0,
    epochs: Annotated[int, typer.Option(min=1, help="Local epochs per update.")] = 2,
    partition: Annotated[
        str, typer.Option(help="Non-IID split of the digits: dirichlet | shards | quantity.")
    ] = "dirichlet",
    alpha: Annotated[float, typer.Option(help="Dirichlet alpha > 0 (dirichlet, quantity).")] = 0.5,
    shards_per_client: Annotated[
        int, typer.Option(min=1, help="Shards of sorted labels per silo (shards).")
    ] = 2,
    train_seconds: Annotated[
        float, typer.Option(min=0, help="Nominal compute time per update (digits trains in ms).")
    ] = 0.5,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default runs/<task_name>).")
    ] = None,
) -> None:
    """Run a whole federated task on the embedded stack (no AWS account needed).

    Example: fedasync demo --mode async --strategy fedbuff --clients 8 --stragglers lognormal:1
    """
    from client.partitions import PartitionError
    from fedasync.ops.demo import DemoOptions, run_demo

    # rejections are counted in the summary; only errors interrupt the live view
    logs.configure(level="ERROR")
    sigma = _parse_stragglers(stragglers)
    _check_partition(partition, alpha)
    if attackers >= clients:
        raise typer.BadParameter(
            f"{attackers} attackers among {clients} silos leaves no honest one",
            param_hint="--attackers",
        )
    extra: dict[str, object] = {}
    if strategy_option:
        extra["strategy_options"] = _parse_options(strategy_option, "--strategy-option")
    if proximal_mu:
        extra["proximal_mu"] = proximal_mu
    if dp:
        mode_dp, _, rest_dp = dp.partition(":")
        given = _parse_options([p for p in rest_dp.split(",") if p], "--dp")
        extra["privacy"] = {**DP_DEFAULTS, "mode": mode_dp, **given}
    if server_optimizer:
        kind, _, rest = server_optimizer.partition(":")
        pairs = [p for p in rest.split(",") if p]
        extra["server_optimizer"] = {"kind": kind, **_parse_options(pairs, "--server-optimizer")}
    opts = DemoOptions(
        attackers=attackers,
        extra_config=extra,
        mode=mode,
        strategy=strategy,
        clients=clients,
        rounds=rounds,
        max_versions=max_versions,
        trainer=trainer,
        stragglers_sigma=sigma,
        seed=seed,
        epochs=epochs,
        partition=partition,
        dirichlet_alpha=alpha,
        shards_per_client=shards_per_client,
        out=out,
        train_seconds=train_seconds,
    )
    try:  # the task's config, checked before any stack starts
        opts.task_config()
    except ConfigError as exc:
        raise fail(str(exc)) from None
    console.print(f"running a {mode} task with {clients} silos on the embedded stack…")
    try:
        summary = asyncio.run(run_demo(opts))
    except PartitionError as exc:  # the split is made before the stack starts
        raise typer.BadParameter(str(exc), param_hint="--partition") from None
    _print_summary(summary)
    if summary["execution"]["status"] != "SUCCEEDED":
        raise typer.Exit(1)


# the demo's DP defaults: a budget of epsilon 10 at delta 1e-5, noise z = 1 on deltas
# clipped to norm 1 (the digits model's honest deltas are ~0.3-1 long)
DP_DEFAULTS = {
    "clip_norm": 1.0,
    "noise_multiplier": 1.0,
    "target_epsilon": 10.0,
    "delta": 1e-5,
}


def _parse_options(pairs: list[str], hint: str) -> dict[str, object]:
    """`KEY=VALUE` pairs; a value is read as JSON (numbers, true/false) or kept as text."""
    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=hint)
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def _parse_stragglers(text: str | None) -> float | None:
    if text is None:
        return None
    kind, _, sigma = text.partition(":")
    if kind != "lognormal" or not sigma:
        raise typer.BadParameter(
            "expected lognormal:SIGMA, e.g. lognormal:1.0", param_hint="--stragglers"
        )
    return float(sigma)


def _check_partition(kind: str, alpha: float) -> None:
    from client.partitions import PARTITIONS

    if kind not in PARTITIONS:
        raise typer.BadParameter(
            f"{kind!r} is not one of {', '.join(PARTITIONS)}", param_hint="--partition"
        )
    if not alpha > 0:
        raise typer.BadParameter(f"{alpha} is not > 0", param_hint="--alpha")


def _print_summary(summary: dict[str, object]) -> None:
    table = Table(title=f"fedasync demo: {summary['task_name']}", show_header=False)
    for key in (
        "mode",
        "strategy",
        "clients",
        "versions",
        "final_accuracy",
        "wall_seconds",
        "accepted_updates",
        "global_model_sha256",
        "events_path",
        "report_path",
    ):
        table.add_row(key, str(summary[key]))
    privacy = summary.get("privacy")
    if isinstance(privacy, dict):
        table.add_row("privacy", describe_privacy(privacy))
        table.add_row("finished", str(summary.get("finished")))
    rejected = summary.get("rejected_updates") or []
    table.add_row("rejected_updates", str(len(rejected)))  # type: ignore[arg-type]
    table.add_row("execution", json.dumps(summary["execution"]))
    check = summary.get("replay")
    if isinstance(check, dict):
        verdict = "identical" if check.get("ok") else f"DIFFERS: {check.get('problems')}"
        table.add_row("replay check", f"{verdict} ({check.get('versions_checked')} versions)")
    Console().print(table)


def _mount_events() -> None:
    from fedasync.cli.events import events_app, replay_command

    app.add_typer(events_app, name="events")
    app.command("replay")(replay_command)


def _mount_task() -> None:
    from fedasync.cli.local import local_app
    from fedasync.cli.task import task_app

    app.add_typer(task_app, name="task")
    app.add_typer(local_app, name="local")


def _mount_protocol() -> None:
    from fedasync.cli.model import model_app
    from fedasync.cli.schema import schema_app

    app.add_typer(schema_app, name="schema")
    app.add_typer(model_app, name="model")


_mount_client()
_mount_events()
_mount_task()
_mount_protocol()

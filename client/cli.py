"""`fedasync client run`: one silo, configured by flags or environment variables.

Credentials come from the standard AWS chain (environment, profile, instance or task
role), or, with `--stack-config`, from the silo's own entry in the stack config that
`fedasync local up` writes (its queue URL and access key). No flag takes a secret.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml
from botocore.exceptions import ClientError

from client.config import ClientConfig
from client.data import DEFAULT_EVAL_FRACTION, Dataset, hold_out, load_data
from client.keys import write_new_key
from client.progress import Progress
from client.run import run_client
from client.signals import install_stop_handlers
from client.state import ClientReport
from client.trainers import (
    DEFAULT_TRAINER,
    ENTRY_POINT_GROUP,
    TRAINERS,
    PluginTrainer,
    Trainer,
    get_trainer,
    is_builtin,
    parse_options,
)
from fedasync import logs
from fedasync.aws.session import refusal_message
from fedasync.core.config import TaskConfig
from fedasync.core.errors import FedAsyncError
from fedasync.deployment import Deployment
from fedasync.resources import ENV_BUCKET, ENV_ENDPOINT_URL, ENV_TABLE

client_app = typer.Typer(
    help="Run a silo: the async federated-learning client.", no_args_is_help=True
)

_MiB = 1024 * 1024


@client_app.callback()
def client_group() -> None:
    """Run a silo: the async federated-learning client."""


@client_app.command("run")
def run_command(  # noqa: PLR0917 - one flag per option is what a CLI is
    task: Annotated[str, typer.Option("--task", envvar="FEDASYNC_TASK", help="Task name.")],
    client_id: Annotated[
        str,
        typer.Option(
            "--client-id",
            envvar="FEDASYNC_CLIENT_ID",
            help="This silo's id (as listed in the task).",
        ),
    ],
    endpoint: Annotated[
        str | None,
        typer.Option(
            "--endpoint",
            envvar=ENV_ENDPOINT_URL,
            help="AWS endpoint URL (the embedded stack's); default: real AWS.",
        ),
    ] = None,
    region: Annotated[str, typer.Option(envvar="AWS_DEFAULT_REGION")] = "us-east-1",
    prefix: Annotated[
        str, typer.Option(envvar="FEDASYNC_PREFIX", help="Stack prefix naming the resources.")
    ] = "fedasync",
    queue_url: Annotated[str | None, typer.Option(envvar="FEDASYNC_QUEUE_URL")] = None,
    bucket: Annotated[str | None, typer.Option(envvar=ENV_BUCKET)] = None,
    table: Annotated[str | None, typer.Option(envvar=ENV_TABLE)] = None,
    data: Annotated[
        str,
        typer.Option(
            envvar="FEDASYNC_DATA",
            help="A .npz (x, y) or .csv (label last) file, an image folder (one sub-folder "
            "per class), or digits[:INDEX/N] for a demo Dirichlet partition.",
        ),
    ] = "digits",
    alpha: Annotated[float, typer.Option(help="Dirichlet alpha of the demo partition.")] = 0.5,
    eval_fraction: Annotated[
        float,
        typer.Option(
            envvar="FEDASYNC_EVAL_FRACTION",
            min=0.0,
            max=0.9,
            help="Share of the data held out (per class, seeded) to score each global "
            "model it receives: reported as eval_* metrics (0: none).",
        ),
    ] = DEFAULT_EVAL_FRACTION,
    eval_data: Annotated[
        str | None,
        typer.Option(
            envvar="FEDASYNC_EVAL_DATA",
            help="A separate held-out file or folder (the formats of --data) to score each "
            "global model on, instead of holding out --eval-fraction of --data.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(envvar="FEDASYNC_SEED")] = 0,
    trainer: Annotated[
        str,
        typer.Option(
            envvar="FEDASYNC_TRAINER",
            help=f"{', '.join(sorted(TRAINERS))}, an installed plugin (entry point group "
            f"{ENTRY_POINT_GROUP}), or package.module:factory (your own; see README).",
        ),
    ] = DEFAULT_TRAINER,
    trainer_option: Annotated[
        list[str] | None,
        typer.Option(
            "--trainer-option",
            help="KEY=VALUE passed to a plugin's factory in its options (repeatable).",
        ),
    ] = None,
    max_train_failures: Annotated[
        int,
        typer.Option(min=1, help="Stop after the trainer raises for this many notices in a row."),
    ] = 3,
    num_classes: Annotated[int, typer.Option(help="Classes of the model.")] = 10,
    loss: Annotated[
        str,
        typer.Option(
            envvar="FEDASYNC_LOSS",
            help="The task's loss: cross_entropy (integer labels) or mse (regression: "
            "float targets; the numpy trainer only).",
        ),
    ] = "cross_entropy",
    epochs: Annotated[int, typer.Option(envvar="FEDASYNC_EPOCHS")] = 1,
    heartbeat_interval: Annotated[float, typer.Option(help="Seconds between heartbeats.")] = 10.0,
    visibility_timeout: Annotated[
        int, typer.Option(help="Seconds a held message stays invisible; renewed by each heartbeat.")
    ] = 60,
    part_size_mb: Annotated[int, typer.Option(help="Multipart upload part size (>= 5).")] = 8,
    work_dir: Annotated[Path | None, typer.Option(help="Where models are staged.")] = None,
    stack_config: Annotated[
        Path | None,
        typer.Option(
            "--stack-config",
            envvar="FEDASYNC_STACK_CONFIG",
            help="The stack JSON `local up` wrote: the endpoint, names, and this silo's "
            "queue URL and access key.",
        ),
    ] = None,
    secagg_key: Annotated[
        Path | None,
        typer.Option(
            "--secagg-key",
            envvar="FEDASYNC_SECAGG_KEY",
            help="This silo's SecAgg identity (the PEM file `keygen` wrote).",
        ),
    ] = None,
    task_config: Annotated[
        Path | None,
        typer.Option(
            "--task-config",
            envvar="FEDASYNC_TASK_CONFIG",
            help="The task's YAML: its secure_aggregation.identities are the peers' keys.",
        ),
    ] = None,
) -> None:
    """Run one silo until the task ends or SIGINT/SIGTERM (twice: at once)."""
    logs.configure()
    try:
        given = {"endpoint_url": endpoint, "queue_url": queue_url, "bucket": bucket, "table": table}
        if stack_config is None:
            given |= {"region": region, "prefix": prefix}
        located = locate(stack_config, client_id, given)
        cfg = ClientConfig(
            task_name=task,
            client_id=client_id,
            **located,
            epochs=epochs,
            seed=seed,
            heartbeat_interval_s=heartbeat_interval,
            visibility_timeout_s=visibility_timeout,
            part_size=part_size_mb * _MiB,
            work_dir=work_dir,
            max_train_failures=max_train_failures,
            secagg_key=secagg_key,
            secagg_identities=task_identities(task_config, task),
        )
        regression = _regression(loss, trainer)
        loaded = load_data(data, alpha=alpha, seed=seed, regression=regression)
        dataset, held_out = train_and_held_out(
            loaded, eval_data, eval_fraction, seed=seed, regression=regression
        )
        outputs = (1 if dataset.y.ndim == 1 else dataset.y.shape[1]) if regression else num_classes
        model = _trainer(trainer, trainer_option or [], dataset, outputs, seed=seed, loss=loss)
        report = asyncio.run(_main(cfg, model, dataset, held_out))
    except (FedAsyncError, ValueError, ImportError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except (ClientError, ExceptionGroup) as exc:
        refused = _client_error(exc)
        if refused is None:
            raise
        typer.echo(f"error: {refusal_message(refused, f'client {client_id}')}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"client {report.client_id!r}, task {report.task_name!r}: {report.outcome}; "
        f"{len(report.updates)} update(s) uploaded, {report.superseded} notice(s) superseded"
        + (f", {report.secagg_answers} SecAgg answer(s)" if report.secagg_answers else "")
    )


@client_app.command("keygen")
def keygen_command(
    out: Annotated[Path, typer.Option("--out", help="Where to write the new private key.")],
) -> None:
    """Write a new SecAgg identity (Ed25519, PEM, mode 0600); print its public key."""
    try:
        public = write_new_key(out)
    except FedAsyncError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"wrote {str(out)!r} (mode 0600); register this silo's public key in the task's")
    typer.echo("secure_aggregation.identities:")
    typer.echo(public)


def task_identities(path: Path | None, task: str) -> dict[str, str]:
    """The peers' public keys: the task config's `secure_aggregation.identities`."""
    if path is None:
        return {}
    try:
        cfg = TaskConfig.parse(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"--task-config {str(path)!r} cannot be read: {exc}") from exc
    if cfg.task_name != task:
        raise ValueError(f"--task-config {str(path)!r} is task {cfg.task_name!r}, not {task!r}")
    if cfg.secure_aggregation is None:
        return {}
    return dict(cfg.secure_aggregation.identities)


def _trainer(
    name: str, pairs: list[str], dataset: Dataset, num_classes: int, *, seed: int, loss: str
) -> Trainer:
    """A built-in gets the data's shape (and the loss, for regression); a plugin's factory
    also the seed, the loss and the user's own options (imported now: a path that does not
    import stops here, at once)."""
    options: dict[str, object] = {"num_features": dataset.num_features, "num_classes": num_classes}
    if is_builtin(name):
        if pairs:
            raise ValueError(f"--trainer-option is for plugins; {name!r} is built in")
        built = {**options, **({"loss": "mse"} if loss == "mse" else {})}
        # checked against the task's model on first use, as a plugin is
        return PluginTrainer(name, lambda _spec, _opts: get_trainer(name, **built), options)
    return get_trainer(name, **{**options, "seed": seed, "loss": loss, **parse_options(pairs)})


def train_and_held_out(
    loaded: Dataset, eval_data: str | None, fraction: float, *, seed: int, regression: bool
) -> tuple[Dataset, Dataset | None]:
    """The silo's training data and the part it scores global models on: a separate
    `eval_data` file (all of `loaded` then trains), or `fraction` of `loaded` held out."""
    if eval_data is None:
        return hold_out(loaded, fraction, seed)
    held = load_data(eval_data, seed=seed, regression=regression)
    if held.feature_shape != loaded.feature_shape:
        raise ValueError(
            f"evaluation data {held.source} has examples of shape {held.feature_shape}; "
            f"the training data {loaded.source} has {loaded.feature_shape}"
        )
    return loaded, held


def _regression(loss: str, trainer: str) -> bool:
    if loss not in ("cross_entropy", "mse"):
        raise ValueError(f"--loss {loss!r} is not one of cross_entropy, mse")
    if loss == "mse" and is_builtin(trainer) and trainer != "numpy":
        raise ValueError(f"--loss mse: the {trainer} trainer classifies; use --trainer numpy")
    return loss == "mse"


def _client_error(exc: BaseException) -> ClientError | None:
    """The AWS error behind a failed run (the run's task group wraps it)."""
    if isinstance(exc, ClientError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _client_error(inner)
            if found is not None:
                return found
    return None


def locate(path: Path | None, client_id: str, given: dict[str, str | None]) -> dict[str, object]:
    """Flags win; the stack config fills what they leave out, and gives the key."""
    if path is None:
        return dict(given)
    deployment = Deployment.load(path, given.pop("endpoint_url"), None)
    # the silo keeps its own key only, not the others' the file hands out
    out: dict[str, object] = {"deployment": deployment.model_copy(update={"principals": {}})}
    out |= {name: value for name, value in given.items() if value is not None}
    keys = deployment.principals.get(f"client:{client_id}")
    if keys is None and any(p.startswith("client:") for p in deployment.principals):
        raise ValueError(f"stack config {str(path)!r} has no entry for client {client_id!r}")
    if keys is not None:
        out["aws_access_key_id"] = keys.access_key_id
        out["aws_secret_access_key"] = keys.secret_access_key
    return out


async def _main(
    cfg: ClientConfig, trainer: Trainer, dataset: Dataset, held_out: Dataset | None
) -> ClientReport:
    stop = asyncio.Event()
    uninstall = install_stop_handlers(stop)
    try:
        with Progress(sys.stderr.isatty()) as progress:
            return await run_client(
                cfg,
                trainer=trainer,
                data=dataset,
                eval_data=held_out,
                stop_event=stop,
                progress=progress,
            )
    finally:
        uninstall()

"""`fedasync model export`: write a task's initial weights (safetensors) from a user's model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedasync.core import codec
from fedasync.core.errors import FedAsyncError

model_app = typer.Typer(help="Bring your own model: export its weights.", no_args_is_help=True)


@model_app.command("export")
def export_command(
    source: Annotated[Path, typer.Argument(help="A .keras file or a torch state_dict (.pt).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the .safetensors.")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="keras or torch (default: by suffix).")
    ] = None,
) -> None:
    """Write the weights of a Keras or torch model as the safetensors a task starts from.

    Example: fedasync model export cnn.keras --out model.safetensors
    """
    from fedasync.ops.model_export import export_model

    try:
        exported = export_model(source, fmt)
        sha = codec.write_file(exported.weights, out, who=f"model {str(source)!r}")
    except (FedAsyncError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    for name, arr in exported.weights.items():
        typer.echo(f"  {name}  {arr.dtype}{list(arr.shape)}")
    for name, dtype in exported.left_out:
        typer.echo(f"  left out (not a float tensor, kept local): {name}  {dtype}")
    typer.echo(
        f"wrote {out} ({len(exported.weights)} tensors from {exported.source_format}, "
        f"{out.stat().st_size} bytes, sha256 {sha[:16]}…)"
    )
    typer.echo(
        f"start a task from it: fedasync task start --config task.yaml --initial-weights {out}"
    )

"""`fedasync schema export DIR`: JSON Schemas of the wire models, generated from pydantic.

The checked-in copies (docs/schemas/) are what docs/protocol.md points a foreign client
at; tests/unit/test_schemas.py fails when they drift from the models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from fedasync.core.config import TaskConfig
from fedasync.core.messages import SCHEMA_VERSION, GlobalModelNotice, Heartbeat, UpdateRecord

# file stem -> model: what a silo reads (the notice), what it writes (the update record,
# the heartbeat), and what an operator writes (the task config)
SCHEMAS: dict[str, type[BaseModel]] = {
    "notice": GlobalModelNotice,
    "update_record": UpdateRecord,
    "heartbeat": Heartbeat,
    "task_config": TaskConfig,
}
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

schema_app = typer.Typer(help="JSON Schemas of the wire protocol.", no_args_is_help=True)


def schema_of(model: type[BaseModel], stem: str) -> dict[str, Any]:
    """The model's validation schema, with its dialect, id and the wire schema version."""
    body = model.model_json_schema(mode="validation")
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"https://fedasync.invalid/schemas/{stem}.json",
        "x-fedasync-schema-version": SCHEMA_VERSION,
        **body,
    }


def render(stem: str) -> str:
    """The file text: sorted keys, two-space indent, one trailing newline (stable diffs)."""
    return json.dumps(schema_of(SCHEMAS[stem], stem), indent=2, sort_keys=True) + "\n"


def export_schemas(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem in SCHEMAS:
        path = out / f"{stem}.json"
        path.write_text(render(stem), encoding="utf-8")
        written.append(path)
    return written


@schema_app.command("export")
def export_command(
    out: Annotated[Path, typer.Argument(help="Folder to write one <name>.json per schema.")],
) -> None:
    """Write the JSON Schemas of the notice, update record, heartbeat and task config.

    Example: fedasync schema export docs/schemas
    """
    for path in export_schemas(out):
        typer.echo(f"wrote {path}")

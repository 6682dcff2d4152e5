"""The checked-in JSON Schemas (docs/schemas/) are the ones the pydantic models generate."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from fedasync.cli import app
from fedasync.cli.schema import SCHEMAS, render

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


@pytest.mark.parametrize("stem", sorted(SCHEMAS))
def test_checked_in_schema_is_the_generated_one(stem: str) -> None:
    # GIVEN the schema file checked in under docs/schemas
    checked_in = (DOCS / f"{stem}.json").read_text(encoding="utf-8")
    # WHEN the schema is generated from the model now
    # THEN they are the same text (else: run `fedasync schema export docs/schemas`)
    assert checked_in == render(stem), (
        f"docs/schemas/{stem}.json differs from the model; "
        "run `fedasync schema export docs/schemas` and commit the result"
    )


def test_export_command_writes_one_file_per_schema(tmp_path: Path) -> None:
    # GIVEN an empty folder
    # WHEN `fedasync schema export` writes into it
    result = CliRunner().invoke(app, ["schema", "export", str(tmp_path / "out")])
    # THEN it names and writes notice, update_record, heartbeat and task_config
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["heartbeat.json", "notice.json", "task_config.json", "update_record.json"]
    assert "wrote" in result.output


def _validator(stem: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((DOCS / f"{stem}.json").read_text()))


def test_schemas_accept_wire_examples_and_refuse_what_the_models_refuse() -> None:
    # GIVEN a sync notice and an async update record as docs/protocol.md shows them
    notice = {
        "schema_version": 1, "kind": "global_model", "task_name": "digits", "mode": "sync",
        "version": 3, "round_id": 3, "s3_key": "digits/global/00000003.safetensors",
        "sha256": "a" * 64, "size_bytes": 2648, "final": False, "seq": None,
        "incarnation": "0f3a9c21be",
    }  # fmt: skip
    record = {
        "schema_version": 1, "kind": "update", "task_name": "digits", "client_id": "silo-0",
        "update_id": "silo-0-b00000004-s00000009", "base_version": 4,
        "s3_key": "digits/local/silo-0/00000004-silo-0-b00000004-s00000009.safetensors",
        "sha256": "b" * 64, "size_bytes": 2648, "num_examples": 120,
        "metrics": {"eval_accuracy": 0.9, "eval_loss": 0.31},
    }  # fmt: skip
    # WHEN the checked-in schemas judge them
    # THEN both are valid; a string version number and an unknown field are not
    assert not list(_validator("notice").iter_errors(notice))
    assert not list(_validator("update_record").iter_errors(record))
    assert list(_validator("update_record").iter_errors({**record, "base_version": "4"}))
    assert list(_validator("update_record").iter_errors({**record, "verdict": "accepted"}))

"""One IAM authorisation of a request to the embedded endpoint (stdlib only: it runs inside
the moto server process)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Call:
    access_key: str
    action: str
    resource: str
    context: dict[str, Any] = field(default_factory=dict)
    status: int = 0
    note: str = ""  # e.g. "implied by ReturnValuesOnConditionCheckFailure=ALL_OLD"

    def to_json(self) -> dict[str, Any]:
        return {"type": "call", **asdict(self)}

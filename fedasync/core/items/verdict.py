"""A verdict: the server's decision on one submission, the VERDICT#UPDATE#... item.

`Verdict.from_item` reads a submission as the server knows it (`verdicts.merge`: the
record as submitted with the verdict's attributes; undecided, the inbox item's record).
The builders give the attributes each decision writes; `fedasync.core.verdicts` adds what
it was decided on (`submitted`, `item_digest`). The record's own fields are the silo's
(`fedasync.core.messages.UpdateRecord`): read here as written, since a rejected
submission may hold anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedasync.core.items._values import float_or, int_or

ACCEPTED, REJECTED = "accepted", "rejected"
VERDICT, ITEM_DIGEST = "verdict", "item_digest"  # named by the writes' conditions

# Attributes of a verdict, the server's alone: an inbox item holding one is forged.
VERDICT_ATTRIBUTES = (
    VERDICT,
    "reason",
    "detail",
    "seq",
    "applied_version",
    "staleness",
    "weight",
    "version_sha256",
    "optimizer_sha256",  # the server optimizer state after the step this update made
    "decided_at",
    "discarded",  # accepted, then dropped with a refused global model (server/refused.py)
    "discarded_detail",
    "submitted",
    ITEM_DIGEST,
    "superseded",
    "forged_attributes",
    "forged_values",
    "attributed",
)
# What the server writes on a rejected update; any other verdict attribute on it
# (`seq`, `weight`, ...) was put there by the silo and is part of what it sent.
REJECTION_ATTRIBUTES = (VERDICT, "reason", "detail", "decided_at", "superseded", "attributed")
# The verdict's own bookkeeping, not shown as fields of the merged submission.
BOOKKEEPING = ("submitted", ITEM_DIGEST)
# The attributes a reopened VERDICT item drops (`superseded` keeps the history).
REOPENED = (VERDICT, "reason", "detail", "decided_at", "submitted", ITEM_DIGEST)
SUPERSEDED_ENTRY = (VERDICT, "reason", "detail", "decided_at", ITEM_DIGEST)
FORGED_ATTRIBUTES, FORGED_VALUES = "forged_attributes", "forged_values"


@dataclass(frozen=True)
class Verdict:
    """One submission and the decision on it (`verdict` None: undecided)."""

    sk: str
    client_id: Any  # the record's fields below are as the silo wrote them
    round_id: Any
    size_bytes: Any
    verdict: str | None
    reason: str | None
    detail: str | None
    seq: int | None
    applied_version: int | None
    staleness: int | None
    weight: float | None
    version_sha256: str | None
    decided_at: float | None
    discarded: Any
    attributed: bool
    item_digest: str | None
    superseded: tuple[Mapping[str, Any], ...]
    forged: tuple[str, ...]  # server attributes an undecided inbox item holds

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Verdict:
        verdict = item.get(VERDICT)
        sha = item.get("version_sha256")
        return cls(
            sk=str(item.get("sk")),
            client_id=item.get("client_id"),
            round_id=item.get("round_id"),
            size_bytes=item.get("size_bytes"),
            verdict=str(verdict) if verdict else None,
            reason=str(item["reason"]) if item.get("reason") is not None else None,
            detail=str(item["detail"]) if item.get("detail") is not None else None,
            seq=int_or(item.get("seq")),
            applied_version=int_or(item.get("applied_version")),
            staleness=int_or(item.get("staleness")),
            weight=float_or(item.get("weight")),
            version_sha256=str(sha) if sha is not None else None,
            decided_at=float_or(item.get("decided_at")),
            discarded=item.get("discarded"),
            attributed=item.get("attributed") is True,
            item_digest=item.get(ITEM_DIGEST),
            superseded=tuple(item.get("superseded") or ()),
            forged=tuple(str(a) for a in item.get(FORGED_ATTRIBUTES) or ()),
        )

    @property
    def decided(self) -> bool:
        return self.verdict is not None

    @property
    def accepted(self) -> bool:
        return self.verdict == ACCEPTED

    @property
    def rejected(self) -> bool:
        return self.verdict == REJECTED

    @property
    def settles(self) -> bool:
        """Its client's word for a sync round (`fedasync.core.verdicts.settles`)."""
        return self.accepted or (self.rejected and self.attributed)


def accepted(
    *, applied_version: int, decided_at: float, seq: int | None = None,
    staleness: int | None = None, weight: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """An acceptance (async: with its position `seq`, staleness and weight)."""
    out: dict[str, Any] = {VERDICT: ACCEPTED}
    if seq is not None:
        out.update(seq=seq, staleness=staleness, weight=weight)
    out.update(applied_version=applied_version, decided_at=decided_at)
    return out


def produced(
    *, version_sha256: str | None = None, optimizer_sha256: str | None = None
) -> dict[str, Any]:
    """What an async acceptance made: the version's SHA-256, the optimizer state's."""
    out: dict[str, Any] = {}
    if version_sha256 is not None:
        out["version_sha256"] = version_sha256
    if optimizer_sha256 is not None:
        out["optimizer_sha256"] = optimizer_sha256
    return out


def rejected(
    reason: str, detail: str, decided_at: float, *, attributed: bool | None = None
) -> dict[str, Any]:
    """A rejection with its reason (`attributed`: whether it is for what the client's own
    verified object holds; None where the decision cannot say and writes nothing)."""
    out: dict[str, Any] = {VERDICT: REJECTED, "reason": reason, "detail": detail,
                           "decided_at": decided_at}  # fmt: skip
    if attributed is not None:
        out["attributed"] = attributed
    return out


def discarded(reason: str, detail: str) -> dict[str, Any]:
    """An acceptance dropped with a refused global model (`server/refused.py`)."""
    return {"discarded": reason, "discarded_detail": detail}


def superseded(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"superseded": [dict(h) for h in history]}


def superseded_entry(verdict: Mapping[str, Any]) -> dict[str, Any]:
    """What a reopened rejection leaves on its VERDICT item: the decision and its digest."""
    return {k: verdict[k] for k in SUPERSEDED_ENTRY if k in verdict}


def decided_as(item: Mapping[str, Any], verdict: Mapping[str, Any]) -> dict[str, Any]:
    """The submission `item` with the decision `verdict` (as `merge` would read it back)."""
    return {**item, **verdict}


def accepted_as(item: Mapping[str, Any], applied_version: int) -> dict[str, Any]:
    """The submission `item` as its sync acceptance leaves it, as far as its effects read."""
    return {**item, VERDICT: ACCEPTED, "applied_version": applied_version}


def accepted_by(client_id: str) -> dict[str, Any]:
    """An accepted submission of `client_id`, as much as a round's tally reads of it."""
    return {"client_id": client_id, VERDICT: ACCEPTED}


def forged_fields(inbox: Mapping[str, Any], forged: Sequence[str]) -> dict[str, Any]:
    """What `merge` adds to an undecided inbox item that holds server attributes."""
    return {FORGED_ATTRIBUTES: list(forged), FORGED_VALUES: {k: inbox[k] for k in forged}}


def forged_values(item: Mapping[str, Any]) -> Mapping[str, Any]:
    forged = item.get(FORGED_VALUES)
    return dict(forged) if isinstance(forged, Mapping) else {}

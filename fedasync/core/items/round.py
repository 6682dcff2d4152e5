"""A ROUND#... item (sync): the round's wait token, its seal and members, the tally of its
clients' word, and its result (also the answer to the round's wait). `RoundItem.from_item`
reads one as every build wrote it; the builders give the values of the server's writes.
(The SecAgg phases' own attributes on it are `fedasync/server/secagg_*.py`'s.)"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

CLOSED, MEMBERS = "closed", "members"  # named by the writes' conditions
# the tally of the clients' word, kept by the stream handler (one ADD per run)
SETTLED, ACCEPTED = "settled", "accepted_clients"


@dataclass(frozen=True)
class RoundResult:
    """A round's result: closed into a version, or not (with its cause)."""

    closed: bool
    round_id: int | None = None
    version: int | None = None
    sha256: str | None = None
    finished: bool = False  # central DP: the round's release spent the budget
    finish_reason: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_item(cls, result: Mapping[str, Any] | None) -> RoundResult:
        r = result or {}
        return cls(
            closed=bool(r.get("closed")),
            round_id=int(r["round_id"]) if r.get("round_id") is not None else None,
            version=int(r["version"]) if r.get("version") is not None else None,
            sha256=str(r["sha256"]) if r.get("sha256") is not None else None,
            finished=bool(r.get("finished")),
            finish_reason=str(r["finish_reason"]) if r.get("finish_reason") else None,
            raw=dict(r),
        )

    def get(self, name: str) -> Any:
        """An attribute of the result as stored (`dp`, `secagg`, `optimizer_sha256`, ...)."""
        return self.raw.get(name)


@dataclass(frozen=True)
class RoundItem:
    round_id: int | None = None
    token: str | None = None
    opened_at: float | None = None
    sealed: bool = False
    members: tuple[str, ...] | None = None  # None: not claimed yet
    closed: bool = False
    result: Mapping[str, Any] | None = None
    closed_at: float | None = None
    settled: frozenset[str] = frozenset()
    accepted: frozenset[str] = frozenset()

    @classmethod
    def from_item(cls, item: Mapping[str, Any] | None) -> RoundItem:
        i = item or {}
        members = i.get(MEMBERS)
        return cls(
            round_id=int(i["round_id"]) if i.get("round_id") is not None else None,
            token=i.get("token") or None,
            opened_at=float(i["opened_at"]) if i.get("opened_at") is not None else None,
            sealed=bool(i.get("sealed")),
            members=tuple(str(m) for m in members) if members is not None else None,
            closed=bool(i.get(CLOSED)),
            result=dict(i["result"]) if isinstance(i.get("result"), Mapping) else None,
            closed_at=float(i["closed_at"]) if i.get("closed_at") is not None else None,
            settled=frozenset(i.get(SETTLED) or ()),
            accepted=frozenset(i.get(ACCEPTED) or ()),
        )

    @property
    def is_sealed(self) -> bool:
        """The round takes no more updates: its close has begun (or is done)."""
        return bool(self.sealed or self.members or self.closed)

    def result_of(self, round_id: int) -> dict[str, Any]:
        """The closed round's result (a round closed by an old build may have none)."""
        return dict(self.result or {CLOSED: True, "round_id": round_id})


def opened(token: str, round_id: int, at: float) -> dict[str, Any]:
    return {"token": token, "round_id": round_id, "opened_at": at}


def checked(token: str) -> dict[str, Any]:
    """A check of the open round keeps the wait's new token."""
    return {"token": token}


def seal(round_id: int) -> dict[str, Any]:
    return {"sealed": True, "round_id": round_id}


def claimed(members: list[str], round_id: int) -> dict[str, Any]:
    return {MEMBERS: members, "round_id": round_id}


def closed(result: Mapping[str, Any], at: float) -> dict[str, Any]:
    return {CLOSED: True, "result": dict(result), "closed_at": at}


def tally(settled: Collection[str], accepted: Collection[str]) -> dict[str, Collection[str]]:
    """The string sets a run ADDs its clients' word to."""
    return {SETTLED: settled, ACCEPTED: accepted}


# --- results (the round's wait is answered with them) ------------------------------------


def closed_result(
    round_id: int, version: int, accepted: int, sha: str, extra: Mapping[str, Any]
) -> dict[str, Any]:
    """A round closed into `version` (`extra`: the fold's details, the optimizer's step,
    the dropped silos)."""
    return {CLOSED: True, "round_id": round_id, "version": version, "accepted": accepted,
            "sha256": sha, **extra}  # fmt: skip


def dropped(silos: list[str]) -> dict[str, Any]:
    return {"dropped": silos} if silos else {}


def not_closed(
    round_id: int, cause: str | None, *, arrived: int | None = None, needed: int | None = None,
    reason: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A round that cannot close: the ASL fails the task with its cause."""
    out: dict[str, Any] = {CLOSED: False, "round_id": round_id}
    if arrived is not None or needed is not None:
        out.update(arrived=arrived, needed=needed)
    out["cause"] = cause
    if reason is not None:
        out["reason"] = reason
    return out


def has_dp_release(details: Mapping[str, Any]) -> bool:
    """The fold's details say it made a central DP release."""
    return "dp" in details


def with_dp_release(result: Mapping[str, Any], releases: int) -> dict[str, Any]:
    """A central DP round's result with the release count it made."""
    return {**result, "dp": {**result["dp"], "releases": releases}}


def budget_finish() -> dict[str, Any]:
    """What a round's result adds when its release is the last the DP budget allows."""
    return {"finished": True, "finish_reason": "privacy_budget"}


def budget_refused(round_id: int) -> dict[str, Any]:
    return {CLOSED: False, "finished": True, "round_id": round_id, "reason": "privacy_budget"}


def finish_answer(reason: Any, version: Any, sha: Any) -> dict[str, Any]:
    """The answer to a wait the finish completes (as `task stop` answers it)."""
    return {"finished": True, "reason": reason, "version": version, "sha256": sha}


# Every attribute of a ROUND item and of its result, for the literal scan of
# `tests/unit/test_item_literals.py`.
ATTRIBUTES = (
    "round_id", "token", "opened_at", "sealed", MEMBERS, CLOSED, "result", "closed_at",
    SETTLED, ACCEPTED,
)  # fmt: skip
RESULT_ATTRIBUTES = (
    CLOSED, "round_id", "version", "accepted", "sha256", "dropped", "dp", "secagg",
    "optimizer_sha256", "finished", "finish_reason", "arrived", "needed", "cause", "reason",
)  # fmt: skip

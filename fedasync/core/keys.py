"""Where things live: S3 object keys and DynamoDB sort keys, one place for all of them."""

from __future__ import annotations

TASK_SK = "TASK"
UPDATE_PREFIX = "UPDATE#"
ROUND_PREFIX = "ROUND#"
HEARTBEAT_PREFIX = "HEARTBEAT#"
# The server's decision on one inbox update item lives in the server table under
# `VERDICT#{the update's sort key}` (fedasync.core.verdicts).
VERDICT_PREFIX = "VERDICT#"
# What silos write (the inbox table); every other sort key is the server's (server table).
INBOX_PREFIXES = (UPDATE_PREFIX, HEARTBEAT_PREFIX)


def in_inbox(sk: str) -> bool:
    """Whether `sk` names an item a silo writes (the inbox table), not a server item."""
    return sk.startswith(INBOX_PREFIXES)


def verdict_sk(update_sk: str) -> str:
    """The server table's key of the decision on the inbox item `update_sk`."""
    return f"{VERDICT_PREFIX}{update_sk}"


def update_of_verdict_sk(sk: str) -> str:
    return sk.removeprefix(VERDICT_PREFIX)


def global_key(task_name: str, version: int) -> str:
    return f"{task_name}/global/{version:08d}.safetensors"


def local_prefix(task_name: str, client_id: str) -> str:
    return f"{task_name}/local/{client_id}/"


def local_key(task_name: str, client_id: str, round_or_base: int, update_id: str) -> str:
    return f"{local_prefix(task_name, client_id)}{round_or_base:08d}-{update_id}.safetensors"


def final_key(task_name: str) -> str:
    return f"{task_name}/final.safetensors"


def buffer_key(task_name: str, seq: int) -> str:
    """FedBuff's weighted delta sum after the `seq`-th absorbed update (immutable per seq)."""
    return f"{task_name}/buffer/{seq:08d}.safetensors"


def optimizer_key(task_name: str, version: int) -> str:
    """The server optimizer's state (moments) after the step that made `version`."""
    return f"{task_name}/server/optimizer/{version:08d}.safetensors"


def update_sk(client_id: str, update_id: str, round_id: int | None) -> str:
    """Sync: one update per client per round; async: one item per update id."""
    if round_id is not None:
        return f"{UPDATE_PREFIX}{round_id:08d}#{client_id}"
    return f"{UPDATE_PREFIX}{update_id}"


def round_of_update_sk(sk: str) -> int | None:
    """The round of a sync update's sort key (`UPDATE#{round:08d}#{client}`), else None."""
    head, sep, client = sk.removeprefix(UPDATE_PREFIX).partition("#")
    if not (sk.startswith(UPDATE_PREFIX) and sep and client and len(head) == 8):
        return None
    return int(head) if head.isascii() and head.isdigit() else None


def round_sk(round_id: int) -> str:
    return f"{ROUND_PREFIX}{round_id:08d}"


def heartbeat_sk(client_id: str) -> str:
    return f"{HEARTBEAT_PREFIX}{client_id}"

"""A silo written from docs/protocol.md alone: boto3, safetensors and numpy, nothing else.

It imports neither `client` nor `fedasync`. It joins a sync or an async task, and its
"training" is a trivial numpy step (each tensor moves a fraction of the way towards a
target): it proves the protocol, not the ML. Section numbers (§) are docs/protocol.md's.

    python examples/foreign_client.py --task digits --client-id silo-0 \
        --stack-config .fedasync/stack.json      # what `fedasync local up` wrote

Exit: 0 when the task's final notice arrived, 1 on a refusal or a bad argument.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
import numpy as np
from botocore.config import Config
from botocore.exceptions import ClientError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

PROTOCOL_VERSION = 1  # §0: the `schema_version` this client speaks
Weights = dict[str, np.ndarray]
Train = Callable[[Weights], tuple[Weights, int, dict[str, float]]]


class UnusableModelError(Exception):
    """The announced global model is missing or not the one announced."""


@dataclass(frozen=True)
class Silo:
    """Where the silo's resources are, and its own keys (§8)."""

    task_name: str
    client_id: str
    queue_url: str
    bucket: str
    table: str
    region: str = "us-east-1"
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    visibility_s: int = 60
    wait_s: int = 2
    heartbeat_ttl_s: int = 60


@dataclass
class Outcome:
    """What the run did, for the caller (and the test) to check."""

    updates: list[dict[str, Any]] = field(default_factory=list)  # records written
    already_recorded: int = 0
    final: dict[str, Any] | None = None


def nudge_towards(target: float, rate: float = 0.5, num_examples: int = 100) -> Train:
    """The 'training': w + rate * (target - w), in each tensor's own dtype (§5)."""

    def train(weights: Weights) -> tuple[Weights, int, dict[str, float]]:
        out = {n: (w + rate * (target - w)).astype(w.dtype) for n, w in weights.items()}
        gap = float(np.mean([np.mean(np.abs(target - w)) for w in weights.values()]))
        return out, num_examples, {"eval_loss": gap}  # the received model, scored (§3)

    return train


class ForeignClient:
    def __init__(self, silo: Silo, train: Train) -> None:
        self.silo, self.train = silo, train
        session = boto3.session.Session(
            aws_access_key_id=silo.access_key_id,
            aws_secret_access_key=silo.secret_access_key,
            region_name=silo.region,
        )
        config = Config(retries={"max_attempts": 5, "mode": "standard"})

        def make(service: str) -> Any:
            return session.client(service, endpoint_url=silo.endpoint_url, config=config)

        self.sqs, self.s3, self.ddb = make("sqs"), make("s3"), make("dynamodb")
        self.floor: tuple[bool, int, int] | None = None  # rank of the newest notice handled
        self.incarnation: str | None = None
        self.last_beat = 0.0
        self.outcome = Outcome()

    # --- §1 the notice -------------------------------------------------------------------

    def run(self, timeout_s: float = 120.0) -> Outcome:
        """Serve notices until the final one (§1.3), or raise after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if time.time() - self.last_beat > self.silo.heartbeat_ttl_s / 3:
                self.heartbeat("idle")  # §3: alive while waiting, well inside the TTL
            got = self.sqs.receive_message(
                QueueUrl=self.silo.queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=self.silo.wait_s,
                VisibilityTimeout=self.silo.visibility_s,
            )
            held = [
                (n, m["ReceiptHandle"]) for m in got.get("Messages", []) if (n := self.notice(m))
            ]
            if held and self.handle(held):
                return self.outcome
        raise TimeoutError(f"no final notice for task {self.silo.task_name!r} in {timeout_s} s")

    def notice(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """The body is the notice's JSON (§1.1). Not ours or not understood: left alone."""
        try:
            body = json.loads(message["Body"])
        except ValueError:
            return None
        if not isinstance(body, dict) or body.get("schema_version") != PROTOCOL_VERSION:
            return None
        if body.get("kind") != "global_model" or body.get("task_name") != self.silo.task_name:
            return None
        return body

    @staticmethod
    def rank(n: dict[str, Any]) -> tuple[bool, int, int]:
        """§1.3: final first, then the newest version, then (async) the newest seq."""
        return (bool(n.get("final")), int(n["version"]), -1 if n.get("seq") is None else n["seq"])

    def handle(self, held: list[tuple[dict[str, Any], str]]) -> bool:
        """Act on the newest notice; delete the older ones. True once the task ended."""
        for notice, _ in held:
            if notice.get("incarnation") and notice["incarnation"] != self.incarnation:
                self.incarnation, self.floor = notice["incarnation"], None  # §1.4
        newest = max(held, key=lambda pair: self.rank(pair[0]))[0]
        done = [r for n, r in held if self.rank(n) < self.rank(newest)]
        if self.floor is not None and self.rank(newest) <= self.floor:
            done += [r for n, r in held if self.rank(n) == self.rank(newest)]
            self.delete(done)  # handled before: a duplicate or a redelivery
            return False
        self.delete(done)
        mine = [r for n, r in held if self.rank(n) == self.rank(newest)]
        if newest.get("final"):
            self.outcome.final = newest
            self.delete(mine)
            self.heartbeat("stopped", newest["version"])
            return True
        try:
            self.work(newest, mine)
        except UnusableModelError as exc:  # §1.5: nothing trained; the notice comes back later
            print(f"warning: {exc}; the notice is kept", file=sys.stderr)
            self.visibility(mine, self.silo.visibility_s)
            return False
        self.floor = self.rank(newest)
        self.delete(mine)  # only now: the record is written (§1.5)
        return False

    def delete(self, receipts: list[str]) -> None:
        for receipt in receipts:
            self.sqs.delete_message(QueueUrl=self.silo.queue_url, ReceiptHandle=receipt)

    def visibility(self, receipts: list[str], seconds: int) -> None:
        """Keep the messages of the notice in hand invisible (or let them back in `seconds`)."""
        for receipt in receipts:
            self.sqs.change_message_visibility(
                QueueUrl=self.silo.queue_url, ReceiptHandle=receipt, VisibilityTimeout=seconds
            )

    # --- §2 the update -------------------------------------------------------------------

    def work(self, notice: dict[str, Any], receipts: list[str]) -> None:
        s, version, round_id = self.silo, int(notice["version"]), notice.get("round_id")
        if round_id is not None:  # sync (§2.3)
            update_id, sk = f"r{round_id:08d}", f"UPDATE#{round_id:08d}#{s.client_id}"
        else:  # async: unique per silo and go-ahead
            seq = notice.get("seq")
            update_id = f"{s.client_id}-b{version:08d}" + ("" if seq is None else f"-s{seq:08d}")
            sk = f"UPDATE#{update_id}"
        key = f"{s.task_name}/local/{s.client_id}/{round_id if round_id is not None else version:08d}-{update_id}.safetensors"
        if self.recorded(sk, key):
            self.outcome.already_recorded += 1
            return
        self.heartbeat("downloading", version)
        weights = self.download(notice)
        self.heartbeat("training", version)
        self.visibility(receipts, self.silo.visibility_s)  # a long step: re-arm the lease
        trained, num_examples, metrics = self.train(weights)
        self.heartbeat("uploading", version)
        self.visibility(receipts, self.silo.visibility_s)
        blob = bytes(st_save(trained, metadata={"fedasync.order": json.dumps(list(trained))}))
        sha = hashlib.sha256(blob).hexdigest()
        self.s3.put_object(
            Bucket=s.bucket, Key=key, Body=blob, Metadata={"sha256": sha},
            Tagging="fedasync-kind=local-update",
        )  # fmt: skip
        item: dict[str, Any] = {
            "task_name": {"S": s.task_name},
            "sk": {"S": sk},
            "schema_version": {"N": str(PROTOCOL_VERSION)},
            "kind": {"S": "update"},
            "client_id": {"S": s.client_id},
            "update_id": {"S": update_id},
            "base_version": {"N": str(version)},
            "s3_key": {"S": key},
            "sha256": {"S": sha},
            "size_bytes": {"N": str(len(blob))},
            "num_examples": {"N": str(num_examples)},
            "metrics": {"M": {k: {"N": repr(float(v))} for k, v in metrics.items()}},
        }
        if round_id is not None:
            item["round_id"] = {"N": str(round_id)}
        try:
            # §2.4: written once; an item under our key with another SHA-256 is not ours
            self.ddb.put_item(
                TableName=s.table,
                Item=item,
                ConditionExpression="attribute_not_exists(sk) OR #sha256 <> :mine",
                ExpressionAttributeNames={"#sha256": "sha256"},
                ExpressionAttributeValues={":mine": {"S": sha}},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            self.outcome.already_recorded += 1  # a retry of ours got there first
            return
        self.outcome.updates.append({k: next(iter(v.values())) for k, v in item.items()})
        self.heartbeat("idle", version)

    def recorded(self, sk: str, s3_key: str) -> bool:
        """§2.5: whether our record is under `sk` (the item names our object); we may
        learn that the key exists and the object it names, never what the item holds."""
        got = self.ddb.get_item(
            TableName=self.silo.table,
            Key={"task_name": {"S": self.silo.task_name}, "sk": {"S": sk}},
            ConsistentRead=True,
            ProjectionExpression="#pk, #sk, #a",
            ExpressionAttributeNames={"#pk": "task_name", "#sk": "sk", "#a": "s3_key"},
        )
        return got.get("Item", {}).get("s3_key", {}).get("S") == s3_key

    def download(self, notice: dict[str, Any]) -> Weights:
        """§4: the announced object, its SHA-256 checked before a byte is parsed."""
        try:
            got = self.s3.get_object(Bucket=self.silo.bucket, Key=notice["s3_key"])
        except ClientError as exc:  # no ListBucket: a missing object answers 403 (§4)
            if exc.response["Error"]["Code"] not in ("AccessDenied", "NoSuchKey", "404"):
                raise
            raise UnusableModelError(f"{notice['s3_key']} is not in the bucket") from exc
        blob = got["Body"].read()
        if hashlib.sha256(blob).hexdigest() != notice["sha256"]:
            raise UnusableModelError(f"{notice['s3_key']}: SHA-256 differs from the notice's")
        tensors = st_load(blob)
        header_len = int.from_bytes(blob[:8], "little")
        meta = json.loads(blob[8 : 8 + header_len]).get("__metadata__") or {}
        order = json.loads(meta.get("fedasync.order", "null")) or sorted(tensors)
        return {name: tensors[name] for name in order}

    # --- §3 the heartbeat ----------------------------------------------------------------

    def heartbeat(self, status: str, version: int | None = None) -> None:
        now = time.time()
        item: dict[str, Any] = {
            "task_name": {"S": self.silo.task_name},
            "sk": {"S": f"HEARTBEAT#{self.silo.client_id}"},
            "schema_version": {"N": str(PROTOCOL_VERSION)},
            "kind": {"S": "heartbeat"},
            "client_id": {"S": self.silo.client_id},
            "sent_at": {"N": repr(now)},
            "expires_at": {"N": str(int(now + self.silo.heartbeat_ttl_s))},
            "status": {"S": status},
        }
        if version is not None:
            item["version"] = {"N": str(version)}
        self.ddb.put_item(TableName=self.silo.table, Item=item)
        self.last_beat = now


def silo_from_stack_json(path: str, task_name: str, client_id: str) -> Silo:
    """The names and keys `fedasync local up` writes (a deployment's come from CDK outputs)."""
    with open(path, encoding="utf-8") as fh:
        stack = json.load(fh)
    access = stack["clients"][client_id]
    return Silo(
        task_name=task_name,
        client_id=client_id,
        queue_url=access["queue_url"],
        bucket=stack["bucket"],
        table=stack["table"],
        region=stack.get("region", "us-east-1"),
        endpoint_url=stack.get("endpoint_url"),
        access_key_id=access["aws_access_key_id"],
        secret_access_key=access["aws_secret_access_key"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--stack-config", required=True)
    parser.add_argument("--target", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args(argv)
    try:
        silo = silo_from_stack_json(args.stack_config, args.task, args.client_id)
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: stack config {args.stack_config!r}: {exc!r}", file=sys.stderr)
        return 1
    try:
        out = ForeignClient(silo, nudge_towards(args.target)).run(args.timeout)
    except (ClientError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    assert out.final is not None
    print(
        f"task {args.task!r} ended at version {out.final['version']}; {len(out.updates)} update(s) sent"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

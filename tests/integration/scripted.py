"""A minimal scripted client for server tests: real objects, real records, real queues.

It plays a silo by hand (no trainer): its "local model" is a deterministic function of
the global model, the client and the version, so a test can compute the expected
aggregate independently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from botocore.exceptions import ClientError

from fedasync.aws.records import serialize_item
from fedasync.aws.session import AwsContext
from fedasync.core import codec, keys
from fedasync.core.messages import GlobalModelNotice, UpdateRecord


def local_model(
    global_w: dict[str, np.ndarray], client_index: int, version: int
) -> dict[str, np.ndarray]:
    """A fake training step: move each tensor by a client- and version-specific offset."""
    shift = np.float32(0.25 * (client_index + 1) - 0.1 * version)
    return {
        k: (v + shift * (1 + np.arange(v.size, dtype=np.float32).reshape(v.shape) % 3)).astype(
            v.dtype
        )
        for k, v in global_w.items()
    }


@dataclass
class ScriptedClient:
    aws: AwsContext
    bucket: str
    table: str
    queue_url: str
    client_id: str
    index: int
    num_examples: int
    seen: list[GlobalModelNotice] = field(default_factory=list)
    duplicates: int = 0

    async def poll(self, wait_s: int = 1) -> GlobalModelNotice | None:
        sqs = await self.aws.sqs()
        resp = await sqs.receive_message(
            QueueUrl=self.queue_url, WaitTimeSeconds=wait_s, MaxNumberOfMessages=1
        )
        for msg in resp.get("Messages", []):
            await sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=msg["ReceiptHandle"])
            notice = GlobalModelNotice.parse(msg["Body"])
            self.seen.append(notice)
            return notice
        return None

    async def download(self, key: str) -> dict[str, np.ndarray]:
        s3 = await self.aws.s3()
        resp = await s3.get_object(Bucket=self.bucket, Key=key)
        async with resp["Body"] as body:
            return codec.decode(await body.read())

    async def submit(
        self,
        notice: GlobalModelNotice,
        weights: dict[str, np.ndarray] | None = None,
        *,
        blob: bytes | None = None,
        update_id: str | None = None,
        **record_over: object,
    ) -> UpdateRecord:
        """Upload a model (or raw bytes) and write its update record, as a client does."""
        if blob is None:
            if weights is None:
                weights = local_model(
                    await self.download(notice.s3_key), self.index, notice.version
                )
            blob = codec.encode(weights)
        update_id = update_id or (
            f"r{notice.round_id:08d}"
            if notice.round_id is not None
            else f"{self.client_id}-v{notice.version:08d}"
        )
        round_or_base = notice.round_id if notice.round_id is not None else notice.version
        key = keys.local_key(notice.task_name, self.client_id, round_or_base, update_id)
        s3 = await self.aws.s3()
        await s3.put_object(Bucket=self.bucket, Key=key, Body=blob)
        fields: dict[str, object] = {
            "task_name": notice.task_name,
            "client_id": self.client_id,
            "update_id": update_id,
            "base_version": notice.version,
            "round_id": notice.round_id,
            "s3_key": key,
            "sha256": codec.sha256_bytes(blob),
            "size_bytes": len(blob),
            "num_examples": self.num_examples,
            "metrics": {},
        }
        fields.update(record_over)
        record = (
            UpdateRecord.model_validate(fields)
            if not record_over
            else UpdateRecord.model_construct(**fields)
        )
        item = {
            "sk": keys.update_sk(self.client_id, update_id, notice.round_id),
            **{k: v for k, v in fields.items() if v is not None},
        }
        ddb = await self.aws.dynamodb()
        try:
            await ddb.put_item(
                TableName=self.table,
                Item=serialize_item(item),
                ConditionExpression="attribute_not_exists(sk)",
            )
        except ClientError as exc:
            # a duplicated notice: the update already exists, as a real client finds too
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            self.duplicates += 1
        return record


def notice_json(notice: GlobalModelNotice) -> str:
    return json.dumps(notice.model_dump())

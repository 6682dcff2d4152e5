"""The server's storage edge: the table, the model bucket, the topic, Step Functions.

Every write that decides something is conditional, so a redelivered event or a retry
after a crash finds the work done instead of doing it twice.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from collections.abc import AsyncGenerator, Collection, Mapping, Sequence
from typing import Any

from botocore.exceptions import ClientError

from fedasync.aws.batching import BATCH_GET_MAX_KEYS, drain_unprocessed
from fedasync.aws.records import deserialize_item, serialize_item
from fedasync.aws.session import AwsContext, error_code, object_missing
from fedasync.core.errors import MissingObjectError, PayloadTooLargeError, RegistryError
from fedasync.core.keys import TASK_SK
from fedasync.core.messages import GlobalModelNotice
from fedasync.deployment import Deployment as Where  # the one model of where a stack lives
from fedasync.resources import (
    NOTICE_FILTER_ATTRIBUTE,
    TABLE_PARTITION_KEY,
    TABLE_SORT_KEY,
    shard_topic,
    topic_shard,
)

# A callback for a token that is already spent is work already done, not an error.
SPENT_TOKEN_ERRORS = ("InvalidToken", "TaskTimedOut", "TaskDoesNotExist")


TRANSACT_TRIES = 5
# Why DynamoDB may cancel a transaction that did nothing and may succeed if tried again
# (TransactionCanceledException's CancellationReasons codes, and the plain error codes).
RETRIED_CANCELLATIONS = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded",
     "RequestLimitExceeded"}
)  # fmt: skip
RETRIED_ERRORS = frozenset(
    {"TransactionConflictException", "TransactionInProgressException", "ThrottlingException",
     "ProvisionedThroughputExceededException", "RequestLimitExceeded", "InternalServerError"}
)  # fmt: skip


def transaction_failure(code: str, reasons: Sequence[str]) -> str:
    """What a failed TransactWriteItems means: 'done' (a condition failed: another try did
    the work), 'retry' (cancelled by contention or throttling: nothing was written), or
    'raise' (anything else: a bug or a bad request, which trying again cannot fix)."""
    if code == "ConditionalCheckFailedException":
        return "done"
    if code == "TransactionCanceledException":
        if "ConditionalCheckFailed" in reasons:
            return "done"
        failed = {r for r in reasons if r not in ("None", "")}
        return "retry" if failed and failed <= RETRIED_CANCELLATIONS else "raise"
    return "retry" if code in RETRIED_ERRORS else "raise"


def _names(condition: str) -> dict[str, str]:
    """Conditions name attributes as `#attr` (DynamoDB reserves many plain words)."""
    special = {"pk": TABLE_PARTITION_KEY, "sk": TABLE_SORT_KEY}
    return {f"#{w}": special.get(w, w) for w in re.findall(r"#([A-Za-z_][A-Za-z0-9_]*)", condition)}


class ExecutionNotFoundError(RegistryError):
    """The execution a task records is not one Step Functions knows."""

    reason = "no_execution"


class ServerStore:
    """Typed operations of the server on one deployment."""

    def __init__(self, aws: AwsContext, where: Where) -> None:
        self.aws = aws
        self.where = where

    def _key(self, task_name: str, sk: str) -> dict[str, Any]:
        return {TABLE_PARTITION_KEY: {"S": task_name}, TABLE_SORT_KEY: {"S": sk}}

    async def get_item(self, task_name: str, sk: str) -> dict[str, Any] | None:
        ddb = await self.aws.dynamodb()
        resp = await ddb.get_item(
            TableName=self.where.table, Key=self._key(task_name, sk), ConsistentRead=True
        )
        item = resp.get("Item")
        return deserialize_item(item) if item else None

    async def get_items(self, task_name: str, sks: list[str]) -> list[dict[str, Any] | None]:
        """Several items of one task, strongly consistent, in `sks` order (None: absent).

        BatchGetItem takes at most 100 keys: the keys go in batches of 100, and the keys a
        batch leaves unprocessed (throttling, the 16 MB response limit) are asked again
        with backoff (`drain_unprocessed`)."""
        ddb = await self.aws.dynamodb()
        unique = list(dict.fromkeys(sks))
        found: dict[str, dict[str, Any]] = {}

        async def batch_get(request: dict[str, Any]) -> dict[str, Any]:
            resp = await ddb.batch_get_item(RequestItems=request)
            for raw in resp.get("Responses", {}).get(self.where.table, []):
                item = deserialize_item(raw)
                found[str(item[TABLE_SORT_KEY])] = item
            return dict(resp.get("UnprocessedKeys") or {})

        for start in range(0, len(unique), BATCH_GET_MAX_KEYS):
            chunk = unique[start : start + BATCH_GET_MAX_KEYS]
            request = {
                self.where.table: {
                    "Keys": [self._key(task_name, sk) for sk in chunk],
                    "ConsistentRead": True,
                }
            }
            await drain_unprocessed(batch_get, request, what=f"items of task {task_name!r}")
        return [found.get(sk) for sk in sks]

    async def get_task(self, task_name: str) -> dict[str, Any] | None:
        return await self.get_item(task_name, TASK_SK)

    async def query_prefix(self, task_name: str, prefix: str) -> list[dict[str, Any]]:
        ddb = await self.aws.dynamodb()
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self.where.table,
            "KeyConditionExpression": "#pk = :pk AND begins_with(#sk, :prefix)",
            "ExpressionAttributeNames": {"#pk": TABLE_PARTITION_KEY, "#sk": TABLE_SORT_KEY},
            "ExpressionAttributeValues": {":pk": {"S": task_name}, ":prefix": {"S": prefix}},
            "ConsistentRead": True,
        }
        while True:
            resp = await ddb.query(**kwargs)
            items += [deserialize_item(i) for i in resp.get("Items", [])]
            if "LastEvaluatedKey" not in resp:
                return items
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    async def put_item(self, item: Mapping[str, Any], condition: str | None = None) -> bool:
        """Put; False when the condition failed (someone did it already)."""
        ddb = await self.aws.dynamodb()
        kwargs: dict[str, Any] = {"TableName": self.where.table, "Item": serialize_item(item)}
        if condition:
            kwargs["ConditionExpression"] = condition
            kwargs["ExpressionAttributeNames"] = _names(condition)
        try:
            await ddb.put_item(**kwargs)
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def update_op(
        self,
        task_name: str,
        sk: str,
        values: Mapping[str, Any],
        condition: str | None = None,
        condition_values: Mapping[str, Any] | None = None,
        *,
        add_to_sets: Mapping[str, Collection[str]] | None = None,
        delete_from_sets: Mapping[str, Collection[str]] | None = None,
    ) -> dict[str, Any]:
        """An Update operation (for `update` or a transaction) setting `values`, and adding
        strings to (or deleting them from) string-set attributes; empty collections are
        left out (DynamoDB has no empty set)."""
        names = {f"#a{i}": k for i, k in enumerate(values)}
        exprs: dict[str, Any] = {f":v{i}": v for i, v in enumerate(values.values())}
        clauses = []
        if values:
            clauses.append("SET " + ", ".join(f"#a{i} = :v{i}" for i in range(len(values))))
        for verb, sets in (("ADD", add_to_sets), ("DELETE", delete_from_sets)):
            members = [(k, set(v)) for k, v in (sets or {}).items() if v]
            for j, (name, strings) in enumerate(members):
                names[f"#{verb.lower()}{j}"] = name
                exprs[f":{verb.lower()}{j}"] = strings
            if members:
                clauses.append(
                    f"{verb} "
                    + ", ".join(
                        f"#{verb.lower()}{j} :{verb.lower()}{j}" for j in range(len(members))
                    )
                )
        if not clauses:
            raise ValueError(f"update of {sk!r} in task {task_name!r} changes nothing")
        exprs.update(condition_values or {})
        condition = condition or "attribute_exists(#pk)"
        names.update(_names(condition))
        return {
            "TableName": self.where.table,
            "Key": self._key(task_name, sk),
            "UpdateExpression": " ".join(clauses),
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": serialize_item(exprs),
        }

    async def update(self, op: dict[str, Any]) -> bool:
        ddb = await self.aws.dynamodb()
        try:
            await ddb.update_item(**op)
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    async def transact(self, ops: list[dict[str, Any]]) -> bool:
        """All or nothing; False only when a condition failed (the work was done by another
        try). A transaction cancelled for any other reason (a conflict with a concurrent
        write, throttling) did nothing: it is tried again, a few times, then raised."""
        ddb = await self.aws.dynamodb()
        for attempt in range(TRANSACT_TRIES):
            try:
                await ddb.transact_write_items(TransactItems=[{"Update": op} for op in ops])  # type: ignore[typeddict-item]
            except ClientError as exc:
                reasons = [str(r.get("Code")) for r in exc.response.get("CancellationReasons", [])]
                verdict = transaction_failure(error_code(exc), reasons)
                if verdict == "done":
                    return False
                if verdict == "raise" or attempt == TRANSACT_TRIES - 1:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)
            else:
                return True
        raise AssertionError("unreachable")  # pragma: no cover

    # --- models in S3 -------------------------------------------------------------------

    async def get_object(
        self, key: str, max_bytes: int | None = None, *, named_by_silo: bool = False
    ) -> bytes:
        """The object's bytes. `named_by_silo`: the key comes from an update record, so a
        missing object is the silo's fault (`MissingObjectError`, the update is rejected),
        whether S3 says 404 or, to our role without s3:ListBucket, 403."""
        s3 = await self.aws.s3()
        try:
            resp = await s3.get_object(Bucket=self.where.bucket, Key=key)
        except ClientError as exc:
            if object_missing(exc, unlisted=named_by_silo):
                error = MissingObjectError if named_by_silo else RegistryError
                raise error(
                    f"object {key!r} is missing from the model bucket "
                    f"(S3 answered {error_code(exc)})"
                ) from exc
            raise
        size = int(resp.get("ContentLength", 0))
        if max_bytes is not None and size > max_bytes:
            resp["Body"].close()
            raise PayloadTooLargeError(f"object {key!r} is {size} bytes; the limit is {max_bytes}")
        async with resp["Body"] as body:
            return bytes(await body.read())

    async def iter_objects(
        self,
        keys: Sequence[str],
        *,
        max_bytes: int | None = None,
        ahead: int = 4,
        named_by_silo: bool = False,
    ) -> AsyncGenerator[bytes, None]:
        """The objects at `keys`, in order, with up to `ahead` reads in flight: the reads
        overlap the caller's work on earlier ones, and memory stays bounded. A failed read
        raises at its position. Use with `contextlib.aclosing` when stopping early."""
        pending: deque[asyncio.Task[bytes]] = deque()
        queue = iter(keys)
        try:
            for key in queue:
                pending.append(
                    asyncio.ensure_future(
                        self.get_object(key, max_bytes, named_by_silo=named_by_silo)
                    )
                )
                if len(pending) >= ahead:
                    break
            while pending:
                data = await pending.popleft()
                following = next(queue, None)
                if following is not None:
                    pending.append(
                        asyncio.ensure_future(
                            self.get_object(following, max_bytes, named_by_silo=named_by_silo)
                        )
                    )
                yield data
                del data
        finally:
            for task in pending:
                task.cancel()
            if pending:  # collect them, so no "exception was never retrieved" is left behind
                await asyncio.gather(*pending, return_exceptions=True)

    async def put_object(self, key: str, data: bytes, sha256: str) -> None:
        s3 = await self.aws.s3()
        await s3.put_object(
            Bucket=self.where.bucket,
            Key=key,
            Body=data,
            Metadata={"sha256": sha256},
            ContentType="application/octet-stream",
        )

    # --- notices and callbacks ---------------------------------------------------------------

    async def publish(self, notice: GlobalModelNotice, client_ids: tuple[str, ...]) -> None:
        """One publish per topic shard that holds a recipient, naming only its own."""
        sns = await self.aws.sns()
        shards: dict[int, list[str]] = {}
        for client_id in client_ids:
            shards.setdefault(topic_shard(client_id, self.where.topic_shards), []).append(client_id)
        await asyncio.gather(
            *(
                sns.publish(
                    TopicArn=shard_topic(self.where.topic_arn, shard),
                    Message=notice.to_json(),
                    MessageAttributes={
                        NOTICE_FILTER_ATTRIBUTE: {
                            "DataType": "String.Array",
                            "StringValue": json.dumps(recipients),
                        },
                        "task_name": {"DataType": "String", "StringValue": notice.task_name},
                    },
                )
                for shard, recipients in sorted(shards.items())
            )
        )

    async def send_success(self, token: str, output: Mapping[str, Any]) -> bool:
        """True if this call completed the wait; False if the token was already spent."""
        sfn = await self.aws.sfn()
        try:
            await sfn.send_task_success(taskToken=token, output=json.dumps(output))
        except ClientError as exc:
            if error_code(exc) in SPENT_TOKEN_ERRORS:
                return False
            raise
        return True

    async def send_heartbeat(self, token: str) -> bool:
        sfn = await self.aws.sfn()
        try:
            await sfn.send_task_heartbeat(taskToken=token)
        except ClientError as exc:
            if error_code(exc) in SPENT_TOKEN_ERRORS:
                return False
            raise
        return True

    async def sent_messages(self, execution_arn: str) -> AsyncGenerator[dict[str, Any], None]:
        """The message bodies the execution's SQS tasks sent, newest first (as the service
        orders them; moto gives oldest first), read from its history: what Step Functions
        itself recorded, so nobody but the execution can have put one there. A history
        the service does not have raises `ExecutionNotFoundError`."""
        sfn = await self.aws.sfn()
        kwargs: dict[str, Any] = {
            "executionArn": execution_arn,
            "reverseOrder": True,
            "maxResults": 1000,
        }
        while True:
            try:
                page = await sfn.get_execution_history(**kwargs)
            except ClientError as exc:
                if error_code(exc) in ("ExecutionDoesNotExist", "InvalidArn"):
                    raise ExecutionNotFoundError(
                        f"execution {execution_arn!r} is unknown to Step Functions"
                    ) from exc
                raise
            for event in page.get("events", []):
                body = _message_body(event.get("taskScheduledEventDetails") or {})
                if body is not None:
                    yield body
            if not page.get("nextToken"):
                return
            kwargs["nextToken"] = page["nextToken"]


def _message_body(details: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `MessageBody` of a scheduled `sqs:sendMessage*` task (an object in the ASL; the
    service may render it as JSON text), else None."""
    if details.get("resourceType") != "sqs":
        return None
    try:
        body = json.loads(str(details.get("parameters") or "{}")).get("MessageBody")
        if isinstance(body, str):
            body = json.loads(body)
    except (ValueError, AttributeError):
        return None
    return body if isinstance(body, dict) else None

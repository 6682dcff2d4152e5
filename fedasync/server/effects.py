"""The server's S3, SNS and Step Functions calls (the tables are in `store.py`)."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from botocore.exceptions import ClientError

from fedasync.aws.session import AwsContext, error_code, object_missing
from fedasync.core.errors import MissingObjectError, PayloadTooLargeError, RegistryError
from fedasync.core.messages import GlobalModelNotice
from fedasync.resources import NOTICE_FILTER_ATTRIBUTE, shard_topic, topic_shard

# A callback for a token that is already spent is work already done, not an error.
SPENT_TOKEN_ERRORS = ("InvalidToken", "TaskTimedOut", "TaskDoesNotExist")


class ExecutionNotFoundError(RegistryError):
    """The execution a task records is not one Step Functions knows."""

    reason = "no_execution"


class Effects:
    """Models in S3, notices, callbacks (mixed into `ServerStore`)."""

    aws: AwsContext
    bucket: str
    topic_arn: str
    topic_shards: int

    # --- models in S3 -------------------------------------------------------------------

    async def get_object(
        self, key: str, max_bytes: int | None = None, *, named_by_silo: bool = False
    ) -> bytes:
        """The object's bytes. `named_by_silo`: the key comes from an update record, so a
        missing object is the silo's fault (`MissingObjectError`, the update is rejected),
        whether S3 says 404 or, to our role without s3:ListBucket, 403."""
        s3 = await self.aws.s3()
        try:
            resp = await s3.get_object(Bucket=self.bucket, Key=key)
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
            Bucket=self.bucket,
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
            shards.setdefault(topic_shard(client_id, self.topic_shards), []).append(client_id)
        await asyncio.gather(
            *(
                sns.publish(
                    TopicArn=shard_topic(self.topic_arn, shard),
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

"""The server's S3, SNS and Step Functions calls, through the one storage layer's ports
(`fedasync.aws`: `S3Objects`, `SnsNotices`, `SfnExecutions`); the tables are in
`store.py`. Mixed into `ServerStore`, so the server's code keeps one handle."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from fedasync.aws.executions import Executions
from fedasync.aws.notices import Notices
from fedasync.aws.objects import Objects
from fedasync.core.messages import GlobalModelNotice
from fedasync.core.secagg.notice import SecAggNotice


class Effects:
    """Models in S3, notices, callbacks (mixed into `ServerStore`), on the ports it holds."""

    objects: Objects
    notices: Notices
    executions: Executions

    # --- models in S3 -------------------------------------------------------------------

    async def get_object(
        self, key: str, max_bytes: int | None = None, *, named_by_silo: bool = False
    ) -> bytes:
        """The object's bytes (see `S3Objects.get_bytes`: `named_by_silo` makes a missing
        object the silo's fault, `MissingObjectError`)."""
        return await self.objects.get_bytes(key, max_bytes, named_by_silo=named_by_silo)

    def iter_objects(
        self,
        keys: Sequence[str],
        *,
        max_bytes: int | None = None,
        ahead: int = 4,
        named_by_silo: bool = False,
    ) -> AsyncGenerator[bytes, None]:
        """The objects at `keys`, in order, up to `ahead` reads in flight."""
        return self.objects.iter_objects(
            keys, max_bytes=max_bytes, ahead=ahead, named_by_silo=named_by_silo
        )

    async def put_object(self, key: str, data: bytes, sha256: str) -> None:
        await self.objects.put_bytes(key, data, sha256)

    async def put_object_once(self, key: str, data: bytes, sha256: str) -> tuple[bytes, str]:
        """Write unless an object is at `key` already; the bytes and SHA-256 at `key`."""
        return await self.objects.put_bytes_once(key, data, sha256)

    # --- notices and callbacks ---------------------------------------------------------------

    async def publish(
        self, notice: GlobalModelNotice | SecAggNotice, client_ids: tuple[str, ...]
    ) -> None:
        """One publish per topic shard that holds a recipient, naming only its own."""
        await self.notices.publish(notice, client_ids)

    async def send_success(self, token: str, output: Mapping[str, Any]) -> bool:
        """True if this call completed the wait; False if the token was already spent."""
        return await self.executions.send_success(token, output)

    async def send_heartbeat(self, token: str) -> bool:
        return await self.executions.send_heartbeat(token)

    def sent_messages(self, execution_arn: str) -> AsyncGenerator[dict[str, Any], None]:
        """The message bodies the execution's SQS tasks sent, from its history."""
        return self.executions.sent_messages(execution_arn)

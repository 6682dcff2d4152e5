"""Creating a task: upload global version 0, write the TASK item, start the execution."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from botocore.exceptions import ClientError

from fedasync.core import codec, keys
from fedasync.core.codec import Array
from fedasync.core.config import TaskConfig
from fedasync.core.errors import ConfigError
from fedasync.server.store import ServerStore
from fedasync.server.task_view import spec_to_json


async def start_task(
    store: ServerStore, state_machine_arn: str, cfg: TaskConfig, initial: Mapping[str, Array]
) -> str:
    """Idempotent for the same config: a second start returns the same execution."""
    blob = codec.encode(initial, who=f"initial model of task {cfg.task_name!r}")
    sha = codec.sha256_bytes(blob)
    await store.put_object(keys.global_key(cfg.task_name, 0), blob, sha)
    item = {
        "task_name": cfg.task_name,
        "sk": keys.TASK_SK,
        "config": cfg.model_dump_json(),
        "spec": spec_to_json(codec.spec_of(initial)),
        "status": "STARTING",
        "head_version": 0,
        "head_sha256": sha,
        "initial_sha256": sha,
        "head_size": len(blob),
        "absorbed": 0,
        "buffered": 0,
        "buffer_weight": 0.0,
        "created_at": time.time(),
    }
    if not await store.put_item(item, condition="attribute_not_exists(#sk)"):
        existing = await store.get_task(cfg.task_name) or {}
        if TaskConfig.model_validate_json(existing["config"]) != cfg:
            raise ConfigError(f"task {cfg.task_name!r} already exists with a different config")
    sfn = await store.aws.sfn()
    try:
        resp = await sfn.start_execution(
            stateMachineArn=state_machine_arn,
            name=cfg.task_name,
            input=json.dumps(cfg.execution_input()),
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ExecutionAlreadyExists":
            raise
        return f"{state_machine_arn.replace(':stateMachine:', ':execution:')}:{cfg.task_name}"
    return str(resp["executionArn"])

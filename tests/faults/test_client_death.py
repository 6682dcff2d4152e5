"""A silo dies at any point of its work: nothing partial is visible, its notice comes back,
and the task goes on without it (sync: the round closes by quorum at its deadline)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.core.messages import GlobalModelNotice
from fedasync.server.tasks import start_task
from tests.faults.harness import (
    CLIENTS,
    EXAMPLES,
    all_decided,
    answer_rounds,
    next_notice,
    stack_for,
)
from tests.integration.scripted import ScriptedClient, local_model
from tests.integration.test_server_sync import (
    clients_for,
    fedavg_by_hand,
    initial_model,
    store_for,
    wait_execution,
)

PHASES = ("before-download", "mid-training", "mid-upload", "after-upload-before-record")
VISIBILITY_S = 2


async def die_while_working(client: ScriptedClient, task_name: str, phase: str) -> str:
    """Receive the notice (not deleting it: only a written record allows that), work up to
    `phase`, and vanish: no cleanup, as a killed process. Returns the message id."""
    sqs, s3 = await client.aws.sqs(), await client.aws.s3()
    while True:
        resp = await sqs.receive_message(
            QueueUrl=client.queue_url, WaitTimeSeconds=1, VisibilityTimeout=VISIBILITY_S
        )
        for msg in resp.get("Messages", []):
            notice = GlobalModelNotice.parse(msg["Body"])
            if notice.task_name == task_name and not notice.final:
                break
        else:
            continue
        break
    if phase == "before-download":
        return str(msg["MessageId"])
    global_w = await client.download(notice.s3_key)
    if phase == "mid-training":
        return str(msg["MessageId"])
    blob = codec.encode(local_model(global_w, client.index, notice.version))
    update_id = f"r{notice.version:08d}" if notice.round_id is not None else "c-v00000000"
    key = keys.local_key(task_name, client.client_id, notice.version, update_id)
    if phase == "mid-upload":
        upload = await s3.create_multipart_upload(Bucket=client.bucket, Key=key)
        part = blob + b"\0" * (5 * 1024 * 1024)  # one full-size part, never completed
        await s3.upload_part(
            Bucket=client.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=part
        )
    else:
        await s3.put_object(Bucket=client.bucket, Key=key, Body=blob)
    return str(msg["MessageId"])


async def notice_comes_back(client: ScriptedClient, message_id: str) -> bool:
    sqs = await client.aws.sqs()
    for _ in range(VISIBILITY_S * 4):
        resp = await sqs.receive_message(
            QueueUrl=client.queue_url,
            WaitTimeSeconds=1,
            MaxNumberOfMessages=10,
            AttributeNames=["ApproximateReceiveCount"],
        )
        for msg in resp.get("Messages", []):
            if msg["MessageId"] == message_id:
                return int(msg["Attributes"]["ApproximateReceiveCount"]) >= 2
    return False


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_dead_silo_leaves_nothing_partial_and_the_task_goes_on(
    moto_server, prefix, mode, phase
):
    base = {"task_name": "t", "clients": list(CLIENTS), "mode": mode}
    if mode == "sync":
        cfg = TaskConfig.parse({**base, "rounds": 1, "min_clients": 2, "round_timeout_s": 4})
    else:
        cfg = TaskConfig.parse({**base, "max_versions": 2, "max_staleness": 5})
    async with stack_for(moto_server, prefix) as stack:
        store = store_for(stack)
        arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial_model())
        a, b, c = clients_for(stack, CLIENTS, EXAMPLES)
        # GIVEN silo c dies at `phase` of its first update
        message_id = await die_while_working(c, "t", phase)
        # WHEN a and b work normally
        if mode == "sync":
            others = asyncio.gather(answer_rounds(a, "t"), answer_rounds(b, "t"))
        else:
            others = asyncio.gather(*(_submit_once(x) for x in (a, b)))
        await asyncio.wait_for(others, 60)
        desc = await wait_execution(stack, arn)
        # THEN the task ends SUCCEEDED without c (sync: closed by quorum at the deadline)
        assert desc["status"] == "SUCCEEDED", desc.get("cause")
        updates = await all_decided(store, "t")
        assert {u["client_id"] for u in updates} == {"a", "b"}
        accepted = [u for u in updates if u["verdict"] == "accepted"]
        assert len(accepted) == (2 if mode == "sync" else cfg.max_versions)
        # (async: an update racing the end is recorded as too late, never lost)
        assert {u.get("reason") for u in updates if u["verdict"] != "accepted"} <= {"task_finished"}
        if mode == "sync":
            x0 = initial_model()
            expected = fedavg_by_hand([local_model(x0, 0, 0), local_model(x0, 1, 0)], EXAMPLES[:2])
            got = codec.decode(await store.get_object(keys.global_key("t", 1)))
            for name in expected:
                np.testing.assert_array_equal(got[name], expected[name])
        # AND no partial object of c is visible; a whole one only if it finished uploading
        s3 = await stack.aws.s3()
        listed = await s3.list_objects_v2(
            Bucket=stack.endpoints.bucket, Prefix=keys.local_prefix("t", "c")
        )
        visible = [o["Key"] for o in listed.get("Contents", [])]
        assert len(visible) == (1 if phase == "after-upload-before-record" else 0), visible
        # AND c's notice came back for its next life
        assert await notice_comes_back(c, message_id)


async def _submit_once(client: ScriptedClient) -> None:
    notice = await next_notice(client, "t")
    await client.submit(notice, update_id=f"{client.client_id}-v{notice.version:08d}")
    # then keep going on the newest version until the final notice
    while not (notice := await next_notice(client, "t")).final:
        await client.submit(notice, update_id=f"{client.client_id}-v{notice.version:08d}")

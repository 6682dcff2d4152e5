"""AWS quotas hold on the embedded stack: each request just past one is refused as AWS
refuses it, and the request just within it passes (limits from the AWS service quotas
pages: DynamoDB transactions 4 MB, SQS 256 KiB, SNS 200 filter policies per topic, Step
Functions 256 KiB payloads, 80-character names, 25,000 history events)."""

from __future__ import annotations

import asyncio
import json

import pytest
from botocore.exceptions import ClientError

from fedasync.aws.session import AwsContext, error_code
from fedasync.local import quotas
from fedasync.local.server import LocalMotoServer

KIB = 1024


async def _table(ddb, name: str) -> None:
    await ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


def _put(table: str, key: str, size: int) -> dict:
    # item size = len("pk") + len(key) + len("b") + size bytes of string
    return {"Put": {"TableName": table, "Item": {"pk": {"S": key}, "b": {"S": "x" * size}}}}


def test_item_size_follows_the_dynamodb_rules():
    # hand-computed from the DynamoDB developer guide's item-size rules
    assert quotas.item_size({"pk": {"S": "abc"}}) == 2 + 3
    assert quotas.item_size({"n": {"N": "12345"}}) == 1 + 4  # 5 digits: 3 + 1 bytes
    assert quotas.item_size({"f": {"BOOL": True}, "z": {"NULL": True}}) == 2 + 2
    assert quotas.item_size({"b": {"B": "AAECAw=="}}) == 1 + 4  # 4 raw bytes
    # a list: 3 bytes + (1 + element) per element
    assert quotas.item_size({"l": {"L": [{"S": "ab"}, {"N": "1"}]}}) == 1 + 3 + 3 + 3
    assert quotas.item_size({"s": {"SS": ["a", "bcd"]}}) == 1 + 4


async def test_transaction_over_4_mb_is_refused(moto_server: LocalMotoServer, prefix):
    async with AwsContext(moto_server.endpoint_url) as aws:
        ddb = await aws.dynamodb()
        table = f"{prefix}-tx"
        await _table(ddb, table)
        # GIVEN 11 items of 390,000 bytes each (each under the 400 KB item limit)
        items = [_put(table, f"k{i:02d}", 390_000) for i in range(11)]
        # WHEN they are written in one transaction (4.29 MB > 4 MiB)
        with pytest.raises(ClientError) as refused:
            await ddb.transact_write_items(TransactItems=items)
        # THEN it is refused as AWS refuses it, and nothing was written
        assert error_code(refused.value) == "ValidationException"
        assert "4 MB" in str(refused.value)
        assert "Item" not in await ddb.get_item(TableName=table, Key={"pk": {"S": "k00"}})
        # AND ten of them (3.9 MB) pass
        await ddb.transact_write_items(TransactItems=items[:10])


async def test_sqs_message_over_256_kib_is_refused(moto_server: LocalMotoServer, prefix):
    async with AwsContext(moto_server.endpoint_url) as aws:
        sqs = await aws.sqs()
        url = (await sqs.create_queue(QueueName=f"{prefix}-q"))["QueueUrl"]
        # WHEN a body of 256 KiB + 1 byte is sent: THEN InvalidParameterValue
        with pytest.raises(ClientError) as refused:
            await sqs.send_message(QueueUrl=url, MessageBody="a" * (256 * KIB + 1))
        assert error_code(refused.value) == "InvalidParameterValue"
        # a body within the limit, and a message whose attributes push it over
        await sqs.send_message(QueueUrl=url, MessageBody="a" * (256 * KIB - 10))
        with pytest.raises(ClientError):
            await sqs.send_message(
                QueueUrl=url,
                MessageBody="a" * (256 * KIB - 10),
                MessageAttributes={"k": {"DataType": "String", "StringValue": "v" * 20}},
            )
        # a batch of three 100 KiB messages: each fits, the batch (300 KiB) does not
        entries = [{"Id": str(i), "MessageBody": "b" * (100 * KIB)} for i in range(3)]
        with pytest.raises(ClientError) as batch:
            await sqs.send_message_batch(QueueUrl=url, Entries=entries)
        assert error_code(batch.value) == "BatchRequestTooLong"
        await sqs.send_message_batch(QueueUrl=url, Entries=entries[:2])


@pytest.mark.slow
async def test_sns_takes_200_filter_policies_and_delivers_to_every_subscription(
    moto_server: LocalMotoServer, prefix
):
    async with AwsContext(moto_server.endpoint_url) as aws:
        sns, sqs = await aws.sns(), await aws.sqs()
        topic = (await sns.create_topic(Name=f"{prefix}-t"))["TopicArn"]

        async def queue(i: int) -> tuple[str, str]:
            url = (await sqs.create_queue(QueueName=f"{prefix}-s{i}"))["QueueUrl"]
            attrs = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            return url, attrs["Attributes"]["QueueArn"]

        queues = await asyncio.gather(*(queue(i) for i in range(201)))

        async def subscribe(i: int) -> None:
            await sns.subscribe(
                TopicArn=topic,
                Protocol="sqs",
                Endpoint=queues[i][1],
                Attributes={
                    "RawMessageDelivery": "true",
                    "FilterPolicy": json.dumps({"to": [f"c{i}", "all"]}),
                },
            )

        # GIVEN 200 subscriptions with a filter policy
        for i in range(200):
            await subscribe(i)
        # WHEN the 201st is asked for: THEN FilterPolicyLimitExceeded, and no subscription
        with pytest.raises(ClientError) as refused:
            await subscribe(200)
        assert error_code(refused.value) == "FilterPolicyLimitExceeded"
        subs, token = [], None
        while True:
            page = await sns.list_subscriptions_by_topic(
                TopicArn=topic, **({"NextToken": token} if token else {})
            )
            subs += page["Subscriptions"]
            token = page.get("NextToken")
            if not token:
                break
        assert len(subs) == 200
        # AND a publish to all reaches every one of the 200 (moto alone reached 100)
        await sns.publish(
            TopicArn=topic,
            Message="hello",
            MessageAttributes={"to": {"DataType": "String", "StringValue": "all"}},
        )
        counts = await asyncio.gather(
            *(
                sqs.get_queue_attributes(
                    QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
                )
                for url, _ in queues[:200]
            )
        )
        assert [int(c["Attributes"]["ApproximateNumberOfMessages"]) for c in counts] == [1] * 200


_PASS = json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}})
_ROLE = "arn:aws:iam::123456789012:role/quota-test"


async def test_execution_names_and_payloads_follow_step_functions_rules(
    moto_server: LocalMotoServer, prefix
):
    async with AwsContext(moto_server.endpoint_url) as aws:
        sfn = await aws.sfn()
        machine = (
            await sfn.create_state_machine(name=f"{prefix}-m", definition=_PASS, roleArn=_ROLE)
        )["stateMachineArn"]
        for bad in ["a" * 81, "has space", "colon:name", "slash/name", "star*", "tab\tx"]:
            with pytest.raises(ClientError) as refused:
                await sfn.start_execution(stateMachineArn=machine, name=bad, input="{}")
            assert error_code(refused.value) == "InvalidName", bad
        await sfn.start_execution(stateMachineArn=machine, name="a" * 80, input="{}")
        await sfn.start_execution(stateMachineArn=machine, name="task-1_attempt-2", input="{}")
        # input: 256 KiB is the limit, in UTF-8 bytes ("é" is two)
        big = json.dumps({"x": "é" * (128 * KIB)})
        with pytest.raises(ClientError) as too_big:
            await sfn.start_execution(stateMachineArn=machine, name="big", input=big)
        assert error_code(too_big.value) == "ValidationException"
        fits = json.dumps({"x": "a" * (256 * KIB - 20)})
        await sfn.start_execution(stateMachineArn=machine, name="fits", input=fits)
        # a task's output: the same limit (a bad token is not even looked at first)
        with pytest.raises(ClientError) as output:
            await sfn.send_task_success(taskToken="t", output=json.dumps({"x": "a" * 262_144}))
        assert error_code(output.value) == "ValidationException"


@pytest.mark.slow
async def test_an_execution_past_25000_history_events_fails(
    moto_server: LocalMotoServer, prefix, wait_until
):
    # GIVEN a loop of Pass states: 2 events per state (entered, exited), so a loop of
    # 13,000 iterations of one Pass and one Choice would take 52,002 events
    loop = {
        "StartAt": "Init",
        "States": {
            "Init": {"Type": "Pass", "Result": 0, "ResultPath": "$.n", "Next": "Count"},
            "Count": {
                "Type": "Pass",
                "Parameters": {"n.$": "States.MathAdd($.n, 1)"},
                "Next": "More",
            },
            "More": {
                "Type": "Choice",
                "Choices": [{"Variable": "$.n", "NumericLessThan": 13000, "Next": "Count"}],
                "Default": "Done",
            },
            "Done": {"Type": "Succeed"},
        },
    }
    async with AwsContext(moto_server.endpoint_url) as aws:
        sfn = await aws.sfn()
        machine = (
            await sfn.create_state_machine(
                name=f"{prefix}-loop", definition=json.dumps(loop), roleArn=_ROLE
            )
        )["stateMachineArn"]
        arn = (await sfn.start_execution(stateMachineArn=machine, name="long", input="{}"))[
            "executionArn"
        ]

        async def ended():
            d = await sfn.describe_execution(executionArn=arn)
            return d if d["status"] != "RUNNING" else None

        # WHEN it runs: THEN it fails at the history limit, with that as its cause
        done = await wait_until(ended, timeout_s=240, interval_s=0.5)
        assert done["status"] == "FAILED"
        assert done.get("error") == "States.Runtime"
        assert "25000 events" in done.get("cause", "")
        count, token = 0, None
        while True:
            page = await sfn.get_execution_history(
                executionArn=arn, maxResults=1000, **({"nextToken": token} if token else {})
            )
            count += len(page["events"])
            token = page.get("nextToken")
            if not token:
                break
        assert count == 25_000

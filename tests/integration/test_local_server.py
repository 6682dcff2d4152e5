"""The embedded moto server: its own process, and DynamoDB requests applied atomically."""

from __future__ import annotations

import asyncio

import pytest
from botocore.exceptions import ClientError

from fedasync.aws.session import AwsContext
from fedasync.local.server import LocalMotoServer


async def test_writes_racing_failed_transactions_are_never_lost(
    moto_server: LocalMotoServer, prefix
):
    # GIVEN a table, and transactions that will fail their condition (and so roll back)
    table = f"{prefix}-race"
    async with AwsContext(moto_server.endpoint_url) as aws:
        ddb = await aws.dynamodb()
        await ddb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        await ddb.put_item(TableName=table, Item={"pk": {"S": "head"}, "n": {"N": "0"}})
        # a table of some size: each rollback snapshot takes moto a while to copy
        for start in range(0, 2000, 25):
            await ddb.batch_write_item(
                RequestItems={
                    table: [
                        {
                            "PutRequest": {
                                "Item": {"pk": {"S": f"old-{i:05d}"}, "v": {"S": "x" * 50}}
                            }
                        }
                        for i in range(start, start + 25)
                    ]
                }
            )

        async def put(i: int) -> None:
            await ddb.put_item(TableName=table, Item={"pk": {"S": f"item-{i:04d}"}})

        async def failing_transaction(i: int) -> None:
            with pytest.raises(ClientError) as caught:
                await ddb.transact_write_items(
                    TransactItems=[
                        # applied first, then undone when the next one fails
                        {"Put": {"TableName": table, "Item": {"pk": {"S": f"tx-{i:04d}"}}}},
                        {
                            "Update": {
                                "TableName": table,
                                "Key": {"pk": {"S": "head"}},
                                "UpdateExpression": "SET n = :n",
                                "ConditionExpression": "n = :never",
                                "ExpressionAttributeValues": {
                                    ":n": {"N": str(i)},
                                    ":never": {"N": "-1"},
                                },
                            }
                        },
                    ]
                )
            # cancelled by its condition, not a server error
            assert caught.value.response["Error"]["Code"] == "TransactionCanceledException"

        # WHEN plain writes and failing transactions run at the same time
        writes = 300
        await asyncio.gather(
            *(put(i) for i in range(writes)),
            *(failing_transaction(i) for i in range(60)),
        )
        # THEN every plain write is there and nothing of a failed transaction is
        keys = set()
        kwargs = {"TableName": table, "ConsistentRead": True}
        while True:
            page = await ddb.scan(**kwargs)
            keys |= {item["pk"]["S"] for item in page["Items"]}
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        assert {k for k in keys if k.startswith("item-")} == {
            f"item-{i:04d}" for i in range(writes)
        }
        assert not {k for k in keys if k.startswith("tx-")}
        head = await ddb.get_item(TableName=table, Key={"pk": {"S": "head"}}, ConsistentRead=True)
        assert head["Item"]["n"]["N"] == "0"


async def test_a_failed_transaction_leaves_items_and_the_stream_as_they_were(
    moto_server: LocalMotoServer, prefix
):
    # GIVEN a table with a stream (as the task table), a reader of that stream, one item
    table = f"{prefix}-rollback"
    async with AwsContext(moto_server.endpoint_url) as aws:
        ddb, streams = await aws.dynamodb(), await aws.dynamodbstreams()
        created = await ddb.create_table(
            TableName=table,
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        arn = created["TableDescription"]["LatestStreamArn"]
        shard = (await streams.describe_stream(StreamArn=arn))["StreamDescription"]["Shards"][0]
        iterator = (
            await streams.get_shard_iterator(
                StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )
        )["ShardIterator"]

        def key(sk: str) -> dict[str, dict[str, str]]:
            return {"pk": {"S": "task"}, "sk": {"S": sk}}

        await ddb.put_item(TableName=table, Item={**key("a"), "v": {"N": "0"}})
        # WHEN a transaction changes that item in place and adds one, then fails
        with pytest.raises(ClientError) as caught:
            await ddb.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": table,
                            "Key": key("a"),
                            "UpdateExpression": "SET v = :one",
                            "ExpressionAttributeValues": {":one": {"N": "1"}},
                        }
                    },
                    {"Put": {"TableName": table, "Item": key("b")}},
                    {
                        "ConditionCheck": {
                            "TableName": table,
                            "Key": key("missing"),
                            "ConditionExpression": "attribute_exists(pk)",
                        }
                    },
                ]
            )
        assert caught.value.response["Error"]["Code"] == "TransactionCanceledException"
        # AND the table is written to afterwards
        await ddb.put_item(TableName=table, Item=key("c"))
        # THEN the items are as before the transaction, plus the later write
        got = await ddb.query(
            TableName=table,
            KeyConditionExpression="pk = :t",
            ExpressionAttributeValues={":t": {"S": "task"}},
            ConsistentRead=True,
        )
        assert [(i["sk"]["S"], i.get("v", {}).get("N")) for i in got["Items"]] == [
            ("a", "0"),
            ("c", None),
        ]
        # AND the reader that was already reading sees the later write, and nothing of
        # the transaction (moto alone would have left it reading a discarded stream)
        seen = []
        while iterator and len(seen) < 2:
            page = await streams.get_records(ShardIterator=iterator)
            seen += [(r["eventName"], r["dynamodb"]["Keys"]["sk"]["S"]) for r in page["Records"]]
            iterator = page.get("NextShardIterator") if page["Records"] else None
        assert seen == [("INSERT", "a"), ("INSERT", "c")]

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

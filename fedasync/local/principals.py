"""The embedded stack's principals: one IAM user, with its own access key, per principal.

On AWS each silo assumes its client role, each Lambda function runs as its role, the
state machine as its role, and the operator as whoever holds the operator policy. Here
each of them is an IAM user of the moto server with its own access key, so that every
request it signs names who made it (the call audit reads the key).

Principal names: `client:<id>`, `aggregate`, `control`, `state-machine`, `operator`
(`fedasync.policy.template` names the template's roles the same way).
"""

from __future__ import annotations

import json
import os
from typing import Any

import structlog
from botocore.exceptions import ClientError

from fedasync.aws.executions import execution_arn_for
from fedasync.aws.session import AwsContext, Credentials
from fedasync.deployment import Deployment
from fedasync.local.moto_iam import ACCOUNT, ENV_AUDIT_LOG
from fedasync.policy import definitions
from fedasync.policy.asl import required_actions
from fedasync.policy.definitions import Json, StackArns
from fedasync.resources import ASL_PATH, shard_topic

log = structlog.get_logger()

# moto's Step Functions engine signs a state's service calls with the key of the user
# named like the state machine's role (fedasync.local.moto_process): `state-machine`'s.
SERVER_PRINCIPALS = ("aggregate", "control", "state-machine", "operator")
CLIENT_PREFIX = "client:"


def client_principal(client_id: str) -> str:
    return CLIENT_PREFIX + client_id


def principal_names(spec: Deployment) -> tuple[str, ...]:
    return (*SERVER_PRINCIPALS, *(client_principal(c) for c in spec.client_ids))


def user_name(spec: Deployment, principal: str) -> str:
    return f"{spec.prefix}-{principal.replace(':', '-')}"


def stack_arns(spec: Deployment, stream_arn: str) -> StackArns:
    where = f"{spec.region}:{ACCOUNT}"
    machine = f"arn:aws:states:{where}:stateMachine:{spec.state_machine_name}"
    return StackArns(
        table=f"arn:aws:dynamodb:{where}:table/{spec.table}",
        server_table=f"arn:aws:dynamodb:{where}:table/{spec.server_table}",
        stream=stream_arn,
        bucket=f"arn:aws:s3:::{spec.bucket}",
        topic=f"arn:aws:sns:{where}:{spec.topic_name}",
        topics=tuple(
            f"arn:aws:sns:{where}:{shard_topic(spec.topic_name, i)}"
            for i in range(spec.topic_shards)
        ),
        control_queue=f"arn:aws:sqs:{where}:{spec.control_queue_name}",
        aggregate_failures=f"arn:aws:sqs:{where}:{spec.aggregate_failures_name}",
        state_machine=machine,
        executions=execution_arn_for(machine, "*"),
    )


def policy_of(principal: str, spec: Deployment, arns: StackArns) -> list[Json]:
    """The principal's statements, from the definition the CDK stack uses."""
    if principal.startswith(CLIENT_PREFIX):
        client_id = principal.removeprefix(CLIENT_PREFIX)
        queue = f"arn:aws:sqs:{spec.region}:{ACCOUNT}:{spec.client_queue_name(client_id)}"
        return definitions.client_statements(client_id, queue, arns)
    if principal == "operator":
        return definitions.operator_statements(arns)
    if principal == "state-machine":
        definition = json.loads(ASL_PATH.read_text(encoding="utf-8"))
        return definitions.state_machine_statements(required_actions(definition), arns)
    own = definitions.control_statements(arns) if principal == "control" else []
    return [
        *definitions.server_statements(arns),
        *definitions.event_source_statements(principal, arns),
        *own,
    ]


# moto's access control checks resources only for these services (the others see "*");
# and it evaluates no condition keys of ours.
_RESOURCE_CHECKED = ("s3", "sqs")
_TRANSACTION_ITEMS = ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:ConditionCheckItem")


def enforceable(statements: list[Json]) -> list[Json]:
    """What moto can enforce of `statements`, erring towards allowing (the call audit
    judges the rest exactly): conditions dropped from Allows, conditional Denies
    dropped, resources of services moto does not scope widened to "*"."""
    out = []
    for statement in statements:
        if statement["Effect"] == "Deny" and "Condition" in statement:
            continue
        projected = {k: v for k, v in statement.items() if k != "Condition"}
        actions = list(projected["Action"])
        # moto authorises a transaction as the (non-)action dynamodb:TransactWriteItems;
        # IAM authorises each item as the PutItem / UpdateItem / ConditionCheckItem it is
        if projected["Effect"] == "Allow" and set(actions) & set(_TRANSACTION_ITEMS):
            projected["Action"] = [*actions, "dynamodb:TransactWriteItems"]
        services = {str(a).split(":")[0] for a in projected["Action"]}
        if not services <= set(_RESOURCE_CHECKED):
            if projected["Effect"] == "Deny":
                continue  # a Deny on "*" would deny far more than the deployed one
            projected["Resource"] = "*"
        out.append(projected)
    return out


async def create_principals(
    aws: AwsContext, spec: Deployment, arns: StackArns
) -> dict[str, Credentials]:
    """A user, its policy and a fresh access key per principal (a re-provision replaces
    the older keys)."""
    iam: Any = await aws.iam()
    out: dict[str, Credentials] = {}
    for principal in principal_names(spec):
        name = user_name(spec, principal)
        try:
            await iam.create_user(UserName=name, Tags=[{"Key": "fedasync", "Value": principal}])
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "EntityAlreadyExists":
                raise
            for key in (await iam.list_access_keys(UserName=name))["AccessKeyMetadata"]:
                await iam.delete_access_key(UserName=name, AccessKeyId=key["AccessKeyId"])
        document = {
            "Version": "2012-10-17",
            "Statement": enforceable(policy_of(principal, spec, arns)),
        }
        await iam.put_user_policy(
            UserName=name, PolicyName="fedasync", PolicyDocument=json.dumps(document)
        )
        key = (await iam.create_access_key(UserName=name))["AccessKey"]
        out[principal] = Credentials(key["AccessKeyId"], key["SecretAccessKey"])
    _announce(spec, out)
    return out


def _announce(spec: Deployment, principals: dict[str, Credentials]) -> None:
    """Tell the call audit whose key is whose (key ids only; never a secret)."""
    path = os.environ.get(ENV_AUDIT_LOG)
    if not path:
        return
    lines = [
        json.dumps(
            {
                "type": "principal",
                "access_key": credentials.access_key_id,
                "principal": principal,
                "prefix": spec.prefix,
                "region": spec.region,
            }
        )
        for principal, credentials in principals.items()
    ]
    with open(path, "a", encoding="utf-8") as sink:
        sink.write("".join(line + "\n" for line in lines))
    log.info("stack.principals", prefix=spec.prefix, principals=len(principals))

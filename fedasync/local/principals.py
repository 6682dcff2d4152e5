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

from fedasync.aws.session import AwsContext, Credentials
from fedasync.local.moto_process import ENV_AUDIT_LOG
from fedasync.resources import StackSpec

log = structlog.get_logger()

SERVER_PRINCIPALS = ("aggregate", "control", "state-machine", "operator")
CLIENT_PREFIX = "client:"


def client_principal(client_id: str) -> str:
    return CLIENT_PREFIX + client_id


def principal_names(spec: StackSpec) -> tuple[str, ...]:
    return (*SERVER_PRINCIPALS, *(client_principal(c) for c in spec.client_ids))


def user_name(spec: StackSpec, principal: str) -> str:
    return f"{spec.prefix}-{principal.replace(':', '-')}"


async def create_principals(aws: AwsContext, spec: StackSpec) -> dict[str, Credentials]:
    """A user and a fresh access key per principal (older keys of a re-provision go)."""
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
        key = (await iam.create_access_key(UserName=name))["AccessKey"]
        out[principal] = Credentials(key["AccessKeyId"], key["SecretAccessKey"])
    _announce(spec, out)
    return out


def _announce(spec: StackSpec, principals: dict[str, Credentials]) -> None:
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

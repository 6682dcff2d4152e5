"""A client computes its queue URL and role ARN from the stack's prefix, its id, the
region and the account: the CDK stack names them by the same rule (no output per client)."""

from __future__ import annotations

import hashlib

from fedasync.deployment import Deployment


def test_queue_url_and_role_arn_follow_from_the_names() -> None:
    # GIVEN stack 'fl' in eu-west-1 WHEN client 'bank-3' of account 111122223333 asks
    spec = Deployment(prefix="fl", region="eu-west-1")
    # THEN its names are written out by the rule
    assert spec.client_queue_url("bank-3", "111122223333") == (
        "https://sqs.eu-west-1.amazonaws.com/111122223333/fl-client-bank-3"
    )
    assert spec.client_role_arn("bank-3", "111122223333") == (
        "arn:aws:iam::111122223333:role/fl-client-bank-3"
    )
    assert spec.client_role_arn("bank-3", "1", partition="aws-cn") == (
        "arn:aws-cn:iam::1:role/fl-client-bank-3"
    )


def test_a_role_name_past_64_characters_is_cut_and_hashed() -> None:
    # GIVEN the longest prefix (24) and client id (48): `{prefix}-client-{id}` is 80 long
    prefix, client = "p" * 24, "c" * 48
    full = f"{prefix}-client-{client}"
    assert len(full) == 80
    # WHEN its role is named THEN the first 55 characters, '-', 8 hex digits of SHA-256
    name = Deployment(prefix=prefix).client_role_name(client)
    assert name == full[:55] + "-" + hashlib.sha256(full.encode()).hexdigest()[:8]
    assert len(name) == 64
    # AND a name that fits is kept as it is
    assert Deployment(prefix=prefix).client_role_name("c" * 32) == f"{prefix}-client-{'c' * 32}"

"""One verifying TLS context per process, shared by every aioboto3 client (issue 13)."""

from __future__ import annotations

import ssl

import certifi
from botocore.httpsession import get_cert_path

from fedasync.aws.session import AwsContext, SharedTlsSession, verified_context


async def test_every_client_shares_one_verifying_context() -> None:
    # GIVEN two silos' HTTP sessions with TLS verification on (the default, as on AWS)
    first, second = SharedTlsSession(verify=True), SharedTlsSession(verify=True)
    # WHEN each makes its connector (aiobotocore does so at a client's first call)
    a, b = first._create_connector(None), second._create_connector(None)
    try:
        # THEN both use the same context: the CA bundle was parsed once, not per client
        assert a._ssl is b._ssl
        context = a._ssl
        assert isinstance(context, ssl.SSLContext)
        # AND it still verifies: certificates required, the default bundle's CAs loaded
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.cert_store_stats()["x509_ca"] > 0
        assert context is verified_context(get_cert_path(True))
    finally:
        await a.close()
        await b.close()


async def test_other_verify_values_keep_aiobotocore_own_path() -> None:
    # GIVEN a session told not to verify, and one given its own CA bundle
    off = SharedTlsSession(verify=False)._create_connector(None)
    own = SharedTlsSession(verify=certifi.where())._create_connector(None)
    try:
        # THEN no context for the first; a context of its own (not the shared one), still
        # verifying, for the second
        assert off._ssl is False
        assert isinstance(own._ssl, ssl.SSLContext)
        assert own._ssl is not verified_context(get_cert_path(True))
        assert own._ssl.verify_mode == ssl.CERT_REQUIRED
    finally:
        await off.close()
        await own.close()


async def test_aws_clients_use_the_shared_session_and_open_up_front() -> None:
    # GIVEN an AwsContext for real AWS (no call is made: clients are only built)
    async with AwsContext(None, "eu-west-1") as aws:
        # WHEN a silo opens its three clients before its first notice
        await aws.open_clients("sqs", "s3", "dynamodb")
        # THEN they exist already, each on the shared-TLS HTTP session
        for service in ("sqs", "s3", "dynamodb"):
            client = aws._clients[service]
            assert isinstance(client._endpoint.http_session, SharedTlsSession)
        assert await aws.s3() is aws._clients["s3"]

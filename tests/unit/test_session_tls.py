"""One verifying TLS context per process, shared by every aioboto3 client (issue 13)."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

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


async def test_verify_off_keeps_aiobotocore_own_path() -> None:
    # GIVEN a session told not to verify
    off = SharedTlsSession(verify=False)._create_connector(None)
    try:
        # THEN its connector has no TLS context at all
        assert off._ssl is False
    finally:
        await off.close()


async def test_a_named_ca_bundle_is_parsed_once_and_still_verifies(tmp_path: Path) -> None:
    # GIVEN two sessions given the same CA bundle of their own (botocore reads
    # AWS_CA_BUNDLE / REQUESTS_CA_BUNDLE into `verify`), a copy of certifi's
    bundle = tmp_path / "bundle.pem"
    shutil.copy(certifi.where(), bundle)
    first = SharedTlsSession(verify=str(bundle))._create_connector(None)
    second = SharedTlsSession(verify=str(bundle))._create_connector(None)
    try:
        # THEN they share one context, built from that bundle, not the default one
        assert first._ssl is second._ssl
        assert first._ssl is verified_context(str(bundle))
        assert first._ssl is not verified_context(get_cert_path(True))
        # AND it verifies, with the bundle's CAs loaded
        assert isinstance(first._ssl, ssl.SSLContext)
        assert first._ssl.verify_mode == ssl.CERT_REQUIRED
        assert first._ssl.cert_store_stats()["x509_ca"] > 0
    finally:
        await first.close()
        await second.close()


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

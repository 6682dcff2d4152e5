"""One aioboto3 session per process, and the clients one unit of work opens on it."""

from __future__ import annotations

import contextvars
import functools
import ssl
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, cast

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from botocore.exceptions import ClientError
from botocore.httpsession import create_urllib3_context, get_cert_path

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_sns import SNSClient
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_stepfunctions import SFNClient


@functools.cache
def verified_context(ca_bundle: str) -> ssl.SSLContext:
    """One verifying TLS context per CA bundle for the whole process (aiohttp keeps its
    own defaults the same way): an SSLContext serves any number of connections, on any
    thread. aiobotocore builds one per client and parses the bundle each time, which is
    the slowest step of a client's first call (~0.3 s of CPU under load, for each of a
    silo's three clients)."""
    context: ssl.SSLContext = create_urllib3_context()
    context.load_verify_locations(ca_bundle)
    return context


class SharedTlsSession(AIOHTTPSession):
    """aiobotocore's HTTP session, with the process's verified TLS context instead of a
    fresh one per client. Verification is unchanged: the context is built as aiobotocore
    builds it (botocore's `create_urllib3_context`, CERT_REQUIRED, the default CA bundle
    or the one `verify` names). A client certificate, a proxy or `verify=False` keeps
    aiobotocore's own path."""

    def _create_connector(self, proxy_url: str | None) -> aiohttp.TCPConnector:
        # aiobotocore 2.25's own attributes (its stubs leave them out)
        own = cast(Any, self)
        # `verify` is True or a CA bundle's path (botocore reads AWS_CA_BUNDLE and
        # REQUESTS_CA_BUNDLE into it, which CI images set)
        verify = own._verify
        if proxy_url or own._cert_file or not (verify is True or isinstance(verify, str)):
            connector: aiohttp.TCPConnector = cast(Any, super())._create_connector(proxy_url)
            return connector
        return aiohttp.TCPConnector(
            limit=own._max_pool_connections,
            ssl=verified_context(verify if isinstance(verify, str) else get_cert_path(True)),
            **own._connector_args,
        )


# Long polls park a connection for up to 20 s each; aiobotocore's default pool of 10
# would then starve every other call of the same client.
_OPTIONS: dict[str, Any] = {"max_pool_connections": 50, "retries": {"mode": "standard"}}
CLIENT_CONFIG = AioConfig(http_session_cls=SharedTlsSession, **_OPTIONS)
# On a local endpoint (the embedded moto server on loopback) skip what only guards bytes on
# a network: SigV4 over the S3 payload (plain http would otherwise hash every body) and
# CRC32 trailers. Model objects still carry and are checked against their SHA-256.
# (AioConfig.merge would drop http_session_cls: the options are spelled out.)
LOCAL_CLIENT_CONFIG = AioConfig(
    http_session_cls=SharedTlsSession,
    s3={"payload_signing_enabled": False},
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
    **_OPTIONS,
)


@dataclass(frozen=True)
class Credentials:
    """One principal's access key (the embedded stack gives each principal its own)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)


# The credentials an AwsContext made without explicit ones uses (None: the session's
# own chain). The embedded stack's pumps set it for the handlers they run, so that a
# handler, as on Lambda, calls AWS as its function's role.
principal_credentials: contextvars.ContextVar[Credentials | None] = contextvars.ContextVar(
    "principal_credentials", default=None
)


_default_credentials: list[Credentials] = []


def use_by_default(credentials: Credentials) -> None:
    """Sign with `credentials` where nothing else is given (no explicit key, none set for
    the task): the embedded stack's own process signs as its admin under enforcement."""
    _default_credentials[:] = [credentials]


@functools.cache
def shared_session() -> aioboto3.Session:
    """The process's session: credentials are resolved once, clients share it."""
    return aioboto3.Session()


class AwsContext:
    """Where to talk to (endpoint_url None = real AWS) and the clients opened there.

    Use as `async with AwsContext(url, region) as aws:`; every client it hands out is
    closed when the block exits.
    """

    def __init__(
        self,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        credentials: Credentials | None = None,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self.credentials = (
            credentials
            or principal_credentials.get()
            or (_default_credentials[0] if _default_credentials else None)
        )
        self._stack: AsyncExitStack | None = None
        self._clients: dict[str, Any] = {}

    async def __aenter__(self) -> Self:
        self._stack = AsyncExitStack()
        await self._stack.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        self._clients.clear()
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)

    async def _client(self, service: str) -> Any:
        if self._stack is None:
            raise RuntimeError("AwsContext is not open; use `async with AwsContext(...)`")
        client = self._clients.get(service)
        if client is None:
            keys: dict[str, str] = {}
            if self.credentials is not None:
                keys = {
                    "aws_access_key_id": self.credentials.access_key_id,
                    "aws_secret_access_key": self.credentials.secret_access_key,
                }
            client = await self._stack.enter_async_context(
                shared_session().client(
                    service,  # type: ignore[call-overload]
                    region_name=self.region,
                    endpoint_url=self.endpoint_url,
                    config=CLIENT_CONFIG if self.endpoint_url is None else LOCAL_CLIENT_CONFIG,
                    **keys,
                )
            )
            self._clients[service] = client
        return client

    async def open_clients(self, *services: str) -> None:
        """Make these services' clients now rather than at their first call: a silo does
        it before its first notice, so no round waits on a client being built."""
        for service in services:
            await self._client(service)

    async def s3(self) -> S3Client:
        client: S3Client = await self._client("s3")
        return client

    async def dynamodb(self) -> DynamoDBClient:
        client: DynamoDBClient = await self._client("dynamodb")
        return client

    async def sqs(self) -> SQSClient:
        client: SQSClient = await self._client("sqs")
        return client

    async def sns(self) -> SNSClient:
        client: SNSClient = await self._client("sns")
        return client

    async def sfn(self) -> SFNClient:
        client: SFNClient = await self._client("stepfunctions")
        return client

    async def iam(self) -> Any:
        # The embedded stack's provisioning is its only user (principals and their keys).
        return await self._client("iam")

    async def dynamodbstreams(self) -> Any:
        # No stubs are installed for DynamoDB Streams; the embedded pump is its only user.
        return await self._client("dynamodbstreams")


def error_code(error: ClientError) -> str:
    """The service's error code ('ConditionalCheckFailedException', 'InvalidToken', ...)."""
    return str(error.response.get("Error", {}).get("Code", ""))


# How S3 says a GET found no object. To a role without s3:ListBucket on the bucket (no
# role of ours has it) S3 does not tell a missing key from a forbidden one: both are
# 403 AccessDenied. Where the key was named by a silo, the two mean the same to us.
NOT_FOUND_CODES = ("NoSuchKey", "404", "NotFound")
UNLISTED_CODES = ("AccessDenied", "403")


def object_missing(error: ClientError, *, unlisted: bool) -> bool:
    """Whether an S3 read failed because the object is not there. `unlisted`: count a 403
    as missing (the reader may not list the bucket, and the key is not its own to vouch
    for); otherwise a 403 is a real permission problem and stays one."""
    code = error_code(error)
    return code in NOT_FOUND_CODES or (unlisted and code in UNLISTED_CODES)


ACCESS_DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "AuthorizationError"})


def denial(error: ClientError) -> str | None:
    """The refusal's message if `error` is an authorisation refusal, else None. (moto
    answers a refused SQS JSON call in XML; botocore then reports code "403".)"""
    details = error.response.get("Error", {})
    message = str(details.get("Message", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if "<Message>" in message:
        message = message.split("<Message>", 1)[1].split("</Message>", 1)[0]
    if error_code(error) in ACCESS_DENIED_CODES or (status == 403 and "authoriz" in message):
        return message or "Access Denied"
    return None


def refusal_message(error: ClientError, principal: str | None) -> str:
    """One line for a failed call: who was refused which operation (AWS's message names
    the permission where it can), or the service's error for anything else."""
    operation = getattr(error, "operation_name", "") or "a call"
    refused = denial(error)
    if refused is not None:
        who = principal or "this identity"
        return f"{who} may not call {operation} (missing permission): {refused}"
    message = error.response.get("Error", {}).get("Message", "")
    return f"AWS refused {operation}: {error_code(error)}: {message}"

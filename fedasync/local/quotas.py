"""AWS quotas that moto does not enforce, enforced in the embedded stack's moto process.

moto already refuses, as AWS does: BatchGetItem over 100 keys (and over 16 MB it returns
UnprocessedKeys), TransactWriteItems over 100 actions, an item over 400 KB, an SQS long
poll over 20 s, an SNS message over 256 KiB, a reused execution name. The rest are
enforced here, each refused with the error code AWS returns, so that a call the deployed
stack would refuse fails locally too:

| quota | AWS | here |
|---|---|---|
| TransactWriteItems aggregate size | 4 MB | `ValidationException` |
| SQS message (SendMessage; SendMessageBatch per entry and in total) | 256 KiB | `InvalidParameterValue` / `BatchRequestTooLong` |
| SNS filter policies per topic | 200 | `FilterPolicyLimitExceeded` |
| SNS delivery | every subscription | moto delivered to the first 100 only (a bug) |
| Step Functions execution name | 1–80 characters, no whitespace, brackets, wildcards, ``"#%\\^|~`$&,;:/`` or control characters | `InvalidName` |
| Step Functions execution input, task output | 256 KiB (UTF-8) | `ValidationException` |
| Step Functions execution history | 25,000 events | the execution fails (`States.Runtime`) |

AWS raised SQS's maximum message size to 1 MiB in 2025; the stack keeps the former
256 KiB, which is what SNS-to-SQS delivery (256 KiB) can carry anyway: stricter, never
more permissive.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

WsgiApp = Callable[[dict[str, Any], Any], Iterable[bytes]]

TRANSACTION_MAX_BYTES = 4 * 1024 * 1024
SQS_MESSAGE_MAX_BYTES = 256 * 1024
SNS_FILTER_POLICIES_PER_TOPIC = 200
SFN_PAYLOAD_MAX_BYTES = 256 * 1024
SFN_HISTORY_MAX_EVENTS = 25_000
SFN_NAME_FORBIDDEN = frozenset(' <>{}[]?*"#%\\^|~`$&,;:/') | frozenset(
    chr(i) for i in [*range(0x20), *range(0x7F, 0xA0)]
)


# --- DynamoDB item size (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html)


def _number_size(text: str) -> int:
    """About one byte per two significant digits, plus one (at most 21 bytes)."""
    try:
        digits = Decimal(text).normalize().as_tuple().digits
    except InvalidOperation:
        return len(text)
    return min(21, (len(digits) + 1) // 2 + 1)


def value_size(value: dict[str, Any]) -> int:
    """The size DynamoDB counts for one attribute value (wire JSON form)."""
    ((kind, inner),) = value.items()
    if kind == "S":
        return len(str(inner).encode("utf-8"))
    if kind == "N":
        return _number_size(str(inner))
    if kind == "B":
        return len(base64.b64decode(inner))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(str(s).encode("utf-8")) for s in inner)
    if kind == "NS":
        return sum(_number_size(str(n)) for n in inner)
    if kind == "BS":
        return sum(len(base64.b64decode(b)) for b in inner)
    if kind == "L":
        return 3 + sum(1 + value_size(v) for v in inner)
    if kind == "M":
        return 3 + sum(1 + len(k.encode("utf-8")) + value_size(v) for k, v in inner.items())
    return len(json.dumps(inner))


def item_size(item: dict[str, Any]) -> int:
    """Attribute names and values, as DynamoDB sizes an item."""
    return sum(len(name.encode("utf-8")) + value_size(v) for name, v in item.items())


def transaction_size(transact_items: list[dict[str, Any]]) -> int:
    """The data a TransactWriteItems carries: each Put's item, each action's key and
    expression values (an upper bound of what an Update or Delete writes)."""
    total = 0
    for entry in transact_items:
        for action in entry.values():
            if not isinstance(action, dict):
                continue
            for part in ("Item", "Key", "ExpressionAttributeValues"):
                if isinstance(action.get(part), dict):
                    total += item_size(action[part])
    return total


# --- the request gate --------------------------------------------------------------------


class QuotaRefusalError(Exception):
    """A request beyond a quota: the AWS error code, its message, the HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400, type_prefix: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.type_prefix = code, message, status, type_prefix


def _check_dynamodb(action: str, body: dict[str, Any]) -> None:
    if action != "TransactWriteItems":
        return
    size = transaction_size(list(body.get("TransactItems") or []))
    if size > TRANSACTION_MAX_BYTES:
        raise QuotaRefusalError(
            "ValidationException",
            f"Transaction request cannot be larger than 4 MB (this one: {size} bytes)",
            type_prefix="com.amazon.coral.validate#",
        )


def _sqs_size(entry: dict[str, Any]) -> int:
    """Body plus message attributes (names, types and values), as SQS counts them."""
    size = len(str(entry.get("MessageBody", "")).encode("utf-8"))
    for name, attr in (entry.get("MessageAttributes") or {}).items():
        size += len(name.encode("utf-8")) + len(str(attr.get("DataType", "")).encode("utf-8"))
        if "StringValue" in attr:
            size += len(str(attr["StringValue"]).encode("utf-8"))
        if "BinaryValue" in attr:
            size += len(base64.b64decode(attr["BinaryValue"]))
    return size


def _check_sqs(action: str, body: dict[str, Any]) -> None:
    if action == "SendMessage":
        size = _sqs_size(body)
        if size > SQS_MESSAGE_MAX_BYTES:
            raise QuotaRefusalError(
                "InvalidParameterValue",
                "One or more parameters are invalid. Reason: Message must be shorter than "
                f"{SQS_MESSAGE_MAX_BYTES} bytes.",
                type_prefix="com.amazonaws.sqs#",
            )
    elif action == "SendMessageBatch":
        sizes = [_sqs_size(e) for e in body.get("Entries") or []]
        if sum(sizes) > SQS_MESSAGE_MAX_BYTES:
            raise QuotaRefusalError(
                "BatchRequestTooLong",
                f"Batch requests cannot be longer than {SQS_MESSAGE_MAX_BYTES} bytes. "
                f"You have sent {sum(sizes)} bytes.",
                type_prefix="com.amazonaws.sqs#",
            )


def _sfn_payload(field: str, text: object) -> None:
    if isinstance(text, str) and len(text.encode("utf-8")) > SFN_PAYLOAD_MAX_BYTES:
        raise QuotaRefusalError(
            "ValidationException",
            f"1 validation error detected: Value at '{field}' failed to satisfy constraint: "
            f"Member must have length less than or equal to {SFN_PAYLOAD_MAX_BYTES}",
        )


def check_execution_name(name: str) -> None:
    if not 1 <= len(name) <= 80 or any(ch in SFN_NAME_FORBIDDEN for ch in name):
        raise QuotaRefusalError("InvalidName", f"Invalid Name: '{name}'")


def _check_sfn(action: str, body: dict[str, Any]) -> None:
    if action == "StartExecution":
        if "name" in body:
            check_execution_name(str(body["name"]))
        _sfn_payload("input", body.get("input"))
    elif action == "SendTaskSuccess":
        _sfn_payload("output", body.get("output"))


_JSON_CHECKS: dict[str, Callable[[str, dict[str, Any]], None]] = {
    "DynamoDB_20120810": _check_dynamodb,
    "AmazonSQS": _check_sqs,
    "AWSStepFunctions": _check_sfn,
}


def _refuse(start_response: Any, refusal: QuotaRefusalError) -> list[bytes]:
    body = json.dumps(
        {"__type": refusal.type_prefix + refusal.code, "message": refusal.message}
    ).encode()
    start_response(
        f"{refusal.status} Bad Request",
        [
            ("Content-Type", "application/x-amz-json-1.0"),
            ("Content-Length", str(len(body))),
            ("x-amzn-query-error", f"{refusal.code};Sender"),
        ],
    )
    return [body]


def enforce_quotas(app: WsgiApp) -> WsgiApp:
    """Refuse the JSON-protocol requests (DynamoDB, SQS, Step Functions) that exceed an AWS
    quota before moto sees them; the rest pass through untouched."""

    def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        service, _, action = str(environ.get("HTTP_X_AMZ_TARGET", "")).partition(".")
        check = _JSON_CHECKS.get(service)
        if check is None:
            return app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""

        environ["wsgi.input"] = io.BytesIO(raw)  # moto reads it again
        try:
            parsed = json.loads(raw) if raw else {}
            if isinstance(parsed, dict):
                check(action, parsed)
        except QuotaRefusalError as refusal:
            return _refuse(start_response, refusal)
        except (ValueError, TypeError, KeyError, AttributeError):
            pass  # malformed: moto answers it as AWS would
        return app(environ, start_response)

    return wrapped

"""DynamoDB attribute values to and from plain dicts (floats through Decimal, ints kept)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

Item = dict[str, Any]
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def to_dynamo(value: Any) -> Any:
    # DynamoDB numbers are decimals; boto3 refuses floats rather than round them
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, Mapping):
        return {k: to_dynamo(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_dynamo(v) for v in value]
    return value


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_dynamo(v) for v in value]
    if isinstance(value, set):
        return {_from_dynamo(v) for v in value}
    if hasattr(value, "value") and type(value).__name__ == "Binary":
        return bytes(value.value)
    return value


def serialize_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """Plain dict -> DynamoDB attribute values (floats through Decimal)."""
    return {k: _serializer.serialize(to_dynamo(v)) for k, v in item.items()}


def deserialize_item(item: Mapping[str, Any]) -> Item:
    """DynamoDB attribute values (a stream image too) -> plain dict (ints stay ints)."""
    return {k: _from_dynamo(_deserializer.deserialize(v)) for k, v in item.items()}

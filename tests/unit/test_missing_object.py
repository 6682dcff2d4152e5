"""How an S3 read error is read: missing object, or a real failure."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from fedasync.aws.session import object_missing
from fedasync.core.errors import MissingObjectError, RegistryError


def s3_error(code: str) -> ClientError:
    # the shape botocore gives a GetObject error response
    return ClientError({"Error": {"Code": code, "Message": "..."}}, "GetObject")


@pytest.mark.parametrize("code", ["NoSuchKey", "404", "NotFound"])
def test_not_found_is_missing_for_every_reader(code: str) -> None:
    # GIVEN S3's ways of saying 404 WHEN any reader asks THEN the object is missing
    assert object_missing(s3_error(code), unlisted=True)
    assert object_missing(s3_error(code), unlisted=False)


@pytest.mark.parametrize("code", ["AccessDenied", "403"])
def test_access_denied_is_missing_only_for_a_key_a_silo_named(code: str) -> None:
    # GIVEN a 403: what S3 answers for a missing key to a role without s3:ListBucket
    # WHEN the key came from a silo's record THEN it is missing (the update is rejected)
    assert object_missing(s3_error(code), unlisted=True)
    # WHEN the key is the server's own THEN it stays a permission error (it is raised)
    assert not object_missing(s3_error(code), unlisted=False)


@pytest.mark.parametrize("code", ["SlowDown", "InternalError", "InvalidObjectState"])
def test_other_errors_are_never_missing(code: str) -> None:
    assert not object_missing(s3_error(code), unlisted=True)


def test_a_missing_object_is_a_registry_error_with_its_own_reason() -> None:
    error = MissingObjectError("object 't/local/a/x' is missing from the model bucket")
    assert isinstance(error, RegistryError)
    assert error.reason == "missing_object"

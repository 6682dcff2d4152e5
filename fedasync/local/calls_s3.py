"""What IAM authorises for one S3 REST request to the embedded endpoint (`calls.py` does
the JSON and query protocols). Stdlib only: it runs inside the moto server process."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote
from xml.etree import ElementTree

from fedasync.local.call import Call

# --- S3 (REST) ---------------------------------------------------------------------------

_BUCKET_GET = {
    "uploads": "ListBucketMultipartUploads",
    "versions": "ListBucketVersions",
    "location": "GetBucketLocation",
}
_OBJECT_SUBRESOURCE = {
    "tagging": "ObjectTagging",
    "acl": "ObjectAcl",
    "retention": "ObjectRetention",
}


def s3_calls(environ: Mapping[str, Any], body: bytes) -> Iterator[Call]:
    method = str(environ.get("REQUEST_METHOD", "GET"))
    query = parse_qs(str(environ.get("QUERY_STRING", "")), keep_blank_values=True)
    bucket, _, key = unquote(str(environ.get("PATH_INFO", "/"))).lstrip("/").partition("/")
    if not bucket:
        yield Call("", "s3:ListAllMyBuckets", "*")
        return
    if not key:
        yield from _s3_bucket(method, query, bucket, body)
        return
    arn = f"arn:aws:s3:::{bucket}/{key}"
    sub = next((s for s in _OBJECT_SUBRESOURCE if s in query), None)
    tag_header = environ.get("HTTP_X_AMZ_TAGGING")
    if sub is not None:
        verb = {"PUT": "Put", "GET": "Get", "DELETE": "Delete"}.get(method, method)
        context = (
            {"s3:RequestObjectTagKeys": _tag_keys(body)}
            if sub == "tagging" and verb == "Put"
            else {}
        )
        yield Call("", f"s3:{verb}{_OBJECT_SUBRESOURCE[sub]}", arn, context)
    elif (
        method in ("PUT", "POST")
        and "uploadId" not in query
        and "partNumber" not in query
        and "HTTP_X_AMZ_COPY_SOURCE" in environ
    ):
        source = unquote(str(environ["HTTP_X_AMZ_COPY_SOURCE"])).lstrip("/").split("?")[0]
        yield Call("", "s3:GetObject", f"arn:aws:s3:::{source}", note="copy source")
        yield Call("", "s3:PutObject", arn)
    elif method in ("PUT", "POST"):
        yield Call("", "s3:PutObject", arn)
        if tag_header:
            keys = sorted(parse_qs(str(tag_header), keep_blank_values=True))
            yield Call(
                "",
                "s3:PutObjectTagging",
                arn,
                {"s3:RequestObjectTagKeys": keys},
                note="x-amz-tagging on upload",
            )
    elif method == "DELETE":
        yield Call("", "s3:AbortMultipartUpload" if "uploadId" in query else "s3:DeleteObject", arn)
    elif "uploadId" in query:
        yield Call("", "s3:ListMultipartUploadParts", arn)
    else:
        yield Call("", "s3:GetObjectVersion" if "versionId" in query else "s3:GetObject", arn)


def _s3_bucket(
    method: str, query: Mapping[str, list[str]], bucket: str, body: bytes
) -> Iterator[Call]:
    arn = f"arn:aws:s3:::{bucket}"
    if method == "POST" and "delete" in query:
        for key in _xml_values(body, "Key"):
            yield Call("", "s3:DeleteObject", f"{arn}/{key}", note="DeleteObjects")
        return
    sub = next(
        (
            s
            for s in query
            if s
            not in (
                "list-type",
                "prefix",
                "delimiter",
                "max-keys",
                "continuation-token",
                "start-after",
                "encoding-type",
                "fetch-owner",
                "marker",
            )
        ),
        None,
    )
    if method in ("GET", "HEAD") and sub is None:
        context = {
            f"s3:{k}": v[0] for k, v in query.items() if k in ("prefix", "delimiter", "max-keys")
        }
        yield Call("", "s3:ListBucket", arn, context)
    elif method == "GET" and sub in _BUCKET_GET:
        yield Call("", f"s3:{_BUCKET_GET[sub]}", arn)
    elif method == "PUT" and sub is None:
        yield Call("", "s3:CreateBucket", arn)
    elif method == "DELETE" and sub is None:
        yield Call("", "s3:DeleteBucket", arn)
    else:
        verb = {"PUT": "Put", "GET": "Get", "DELETE": "Delete"}.get(method, method)
        yield Call("", f"s3:{verb}Bucket{(sub or '').capitalize()}", arn)


def _xml_values(body: bytes, tag: str) -> list[str]:
    try:
        root = ElementTree.fromstring(body or b"<x/>")  # noqa: S314 - our own clients' bodies
    except ElementTree.ParseError:
        return []
    return [e.text or "" for e in root.iter() if e.tag.rsplit("}", 1)[-1] == tag]


def _tag_keys(body: bytes) -> list[str]:
    return sorted(set(_xml_values(body, "Key")))

"""The embedded stack's IAM edges inside the moto server process: who may use the
management API, the server's own identities (stack admin, Step Functions engine), and
the per-request recorder the call audit reads.

Imported by `fedasync.local.moto_process` (in the server process) and, for its
constants, by the parent side (`fedasync.local.server`, `fedasync.local.principals`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from typing import Any

WsgiApp = Callable[[dict[str, Any], Any], Iterable[bytes]]

# The header and environment variables the parent (`fedasync.local.server`) uses.
ADMIN_HEADER = "X-Fedasync-Admin"
ENV_ADMIN_TOKEN = "FEDASYNC_MOTO_ADMIN_TOKEN"  # noqa: S105 - a variable name
ENV_AUDIT_LOG = "FEDASYNC_AUDIT_LOG"
ENV_ENFORCE_IAM = "FEDASYNC_ENFORCE_IAM"
ENV_ADMIN_KEY = "FEDASYNC_MOTO_ADMIN_KEY"
ACCOUNT = "123456789012"
ADMIN_USER = "fedasync-stack-admin"
ENGINE_USER = "fedasync-stepfunctions-engine"
_ALL = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)


def guard_management(app: WsgiApp, token: str) -> WsgiApp:
    """moto's management endpoints (`/moto-api/...`: reset, config, seeding) answer only
    requests carrying the token the parent process made up and passed in our environment:
    no principal of the stack can reset it or turn its checks off."""
    import hmac

    def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if str(environ.get("PATH_INFO", "")).startswith("/moto-api"):
            given = str(environ.get("HTTP_" + ADMIN_HEADER.upper().replace("-", "_"), ""))
            if not hmac.compare_digest(given.encode(), token.encode()):
                start_response("403 Forbidden", [("Content-Type", "text/plain")])
                return [b"moto-api is reserved to the embedded stack's own process\n"]
        return app(environ, start_response)

    return wrapped


def record_calls(app: WsgiApp, path: str) -> WsgiApp:
    """Append, per request, what IAM would authorise for it (`fedasync.local.calls`) to
    the JSON-lines file at `path`: the call audit's input."""
    import io
    import json

    from fedasync.local.calls import authorisations, signer

    lock = threading.Lock()
    sink = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the server's life

    def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body = b""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        query = str(environ.get("QUERY_STRING", ""))
        wanted = signer(environ).service != "s3" or "tagging" in query or "delete" in query
        if length and wanted:
            body = environ["wsgi.input"].read(length)
            environ["wsgi.input"] = io.BytesIO(body)
        status: list[int] = []

        def recording_start(code: str, headers: Any, *rest: Any) -> Any:
            status.append(int(code.split(maxsplit=1)[0]))
            return start_response(code, headers, *rest)

        out = list(app(environ, recording_start))
        try:
            calls = authorisations(environ, body)
        except Exception as error:  # a request we cannot parse is recorded as such
            calls = []
            line = {"type": "unparsed", "path": environ.get("PATH_INFO"), "error": repr(error)}
            with lock:
                sink.write(json.dumps(line) + "\n")
        with lock:
            for call in calls:
                record = call.to_json() | {"status": status[0] if status else 0}
                sink.write(json.dumps(record) + "\n")
            sink.flush()
        return out

    return wrapped


class Identities:
    """The server's own identities, made in this process (never over HTTP): the stack
    admin, whose key only the parent learns (provisioning, the tests' oracles), and the
    key moto's Step Functions engine signs its states' service calls with. A reset
    (`/moto-api/reset`, which only the parent may call) drops every user; they come back
    with the same keys."""

    def __init__(self, admin: tuple[str, str] | None) -> None:
        self.admin = admin
        self.keys: dict[str, tuple[str, str]] = {}

    def ensure(self) -> None:
        from moto.iam.models import iam_backends

        backend = iam_backends[ACCOUNT]["global"]
        for user in (ADMIN_USER, ENGINE_USER):
            if user in backend.users:
                continue
            backend.create_user("us-east-1", user)
            # the engine acts for every state machine of the server: it may do what any
            # of them may; the call audit judges each call by the state machine's role
            backend.put_user_policy(user, "all", _ALL)
            key = backend.create_access_key(user)
            wanted = self.keys.get(user) or (self.admin if user == ADMIN_USER else None)
            if wanted is not None:  # the parent's admin key; after a reset, the same keys
                backend.access_keys.pop(key.physical_resource_id, None)
                key.access_key_id, key.secret_access_key = wanted
                backend.access_keys[key.physical_resource_id] = key
            self.keys[user] = (key.access_key_id, key.secret_access_key)


def recreate_after_reset(app: WsgiApp, identities: Identities) -> WsgiApp:
    def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        out = list(app(environ, start_response))
        if str(environ.get("PATH_INFO", "")).startswith("/moto-api/reset"):
            identities.ensure()
        return out

    return wrapped


def user_key(user_name: str) -> tuple[str, str] | None:
    from moto.iam.models import iam_backends

    user = iam_backends[ACCOUNT]["global"].users.get(user_name)
    active = [k for k in (user.access_keys if user else []) if k.status == "Active"]
    return (active[-1].access_key_id, active[-1].secret_access_key) if active else None


def announce_engine(path: str, access_key: str) -> None:
    with open(path, "a", encoding="utf-8") as sink:
        sink.write(json.dumps({"type": "engine", "access_key": access_key}) + "\n")

"""The moto server process: `python -m fedasync.local.moto_process HOST PORT`.

Prints `{"port": ..., "admin": [key id, secret]}` on stdout once it serves (the stack
admin's key, for the parent alone), then serves until its stdin closes: the parent
closes it to stop the server, and the pipe also closes when the parent dies.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import threading
from collections.abc import Iterable
from typing import Any

from fedasync.local import moto_limits, moto_speed, quotas
from fedasync.local.moto_iam import (
    ADMIN_USER,
    ENGINE_USER,
    ENV_ADMIN_KEY,
    ENV_ADMIN_TOKEN,
    ENV_AUDIT_LOG,
    ENV_ENFORCE_IAM,
    Identities,
    WsgiApp,
    announce_engine,
    guard_management,
    record_calls,
    recreate_after_reset,
    user_key,
)
from fedasync.local.moto_timing import ENV_TIMING_LOG, time_requests


def serialize_dynamodb(app: WsgiApp) -> WsgiApp:
    """moto's DynamoDB backend is not thread-safe, and its server answers each request on
    its own thread: a TransactWriteItems deep-copies the table (its rollback snapshot)
    while other threads write to it ("dictionary changed size during iteration"), and a
    rollback would restore a snapshot that misses their writes. DynamoDB applies each
    request atomically; one lock over DynamoDB and DynamoDB Streams requests restores
    that here. Other services (an SQS long poll may wait 20 s) are not held up by it."""
    lock = threading.Lock()

    def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith("DynamoDB"):
            with lock:
                return list(app(environ, start_response))  # the body, built under the lock
        return app(environ, start_response)

    return wrapped


def roll_back_in_place() -> None:
    """moto's TransactWriteItems deep-copies each table it names (all its items and its
    whole stream) before applying anything, and on failure puts the copy in the table's
    place. Two problems:
    - cost: the copy grows with the table and its stream; it was most of moto's CPU in a
      long async run;
    - a stale stream: a shard iterator holds the shard object, so after a rollback every
      reader (our stream pump) keeps reading the old table's shard and never sees a
      record written since.
    Instead, before applying, keep what a transaction can change: a reference to every
    item (a copy of only the items it names, which it may change in place) and the
    stream's length. On failure put those back into the same table and shard objects.
    Nothing else can run meanwhile: DynamoDB requests are serialized (below)."""
    import copy
    from collections import defaultdict

    from moto.dynamodb import models
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    class _KeepTables:
        """Stands in for the `copy` module inside moto's DynamoDB backend: while a
        transaction runs, its "snapshot" of a table is the table itself, so its rollback
        (putting the snapshot back) keeps the same object; ours restores the contents."""

        active = False

        @classmethod
        def deepcopy(cls, value: Any, memo: Any = None) -> Any:
            if cls.active and isinstance(value, Table):
                return value
            return copy.deepcopy(value, memo)

    def named_keys(table: Table, ops: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
        keys = []
        for op in ops:
            key = op.get("Key") or op.get("Item") or {}
            if table.hash_key_attr not in key:
                continue
            range_attr = table.range_key_attr
            keys.append(
                (
                    DynamoType(key[table.hash_key_attr]),
                    DynamoType(key[range_attr]) if range_attr and range_attr in key else None,
                )
            )
        return keys

    def keep(table: Table, ops: list[dict[str, Any]]) -> tuple[dict[Any, Any], int | None]:
        ranged = table.range_key_attr is not None
        items = {h: dict(v) if ranged else v for h, v in table.items.items()}
        for h, r in named_keys(table, ops):
            if ranged and r is not None and r in items.get(h, {}):
                items[h][r] = copy.deepcopy(items[h][r])
            elif not ranged and h in items:
                items[h] = copy.deepcopy(items[h])
        shard = table.stream_shard
        return items, (len(shard.items) if shard is not None else None)

    def put_back(table: Table, kept: tuple[dict[Any, Any], int | None]) -> None:
        items, length = kept
        table.items = defaultdict(dict, items)
        if table.stream_shard is not None and length is not None:
            del table.stream_shard.items[length:]

    original = models.DynamoDBBackend.transact_write_items

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        ops: dict[str, list[dict[str, Any]]] = {}
        for entry in transact_items:
            for op in entry.values():
                name = op.get("TableName") if isinstance(op, dict) else None
                if isinstance(name, str) and name in self.tables:
                    ops.setdefault(name, []).append(op)
        kept = {name: keep(self.tables[name], table_ops) for name, table_ops in ops.items()}
        tables = {name: self.tables[name] for name in kept}
        _KeepTables.active = True
        try:
            original(self, transact_items)
        except BaseException:
            for name, state in kept.items():
                self.tables[name] = tables[name]
                put_back(tables[name], state)
            raise
        finally:
            _KeepTables.active = False

    models.copy = _KeepTables  # type: ignore[assignment,attr-defined]
    models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def cache_module_list() -> None:
    """moto's dispatcher lists its own package directory (a `listdir` and an `isdir` per
    module, ~150) on every request to route it, under a lock every request takes: measured
    at about 6 % of the server's CPU in a sync round. The list cannot change while the
    server runs; list it once."""
    from moto import backends

    modules = frozenset(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules


def _resigned(client: Any, region: str, service: str, key: tuple[str, str]) -> Any:
    """The same client as moto's engine makes, signing with `key`."""
    import boto3

    return boto3.client(
        service,
        region_name=region,
        endpoint_url=client.meta.endpoint_url,
        aws_access_key_id=key[0],
        aws_secret_access_key=key[1],
        config=client.meta.config,
    )


def reuse_step_functions_parts(engine_key: tuple[str, str] | None = None) -> None:
    """moto's Step Functions engine makes a new boto3 client (and so a new connection, a
    new server thread) for every service call a state makes, and parses every JSONPath
    again (a yacc table read) each time it is evaluated: per sync round, several of each
    on the path from one round's close to the next round's notice. Clients are thread
    safe and parsed paths immutable: keep them (a client per region and service, made
    under a lock, since a boto3 session is not safe to create clients from concurrently)."""
    from moto.stepfunctions.parser.asl.component.common.path import result_path
    from moto.stepfunctions.parser.asl.utils import boto_client, json_path

    for module in (json_path, result_path):
        module.parse = functools.lru_cache(maxsize=4096)(module.parse)  # type: ignore[attr-defined]

    original = boto_client.boto_client_for
    clients: dict[tuple[str, str, str], Any] = {}
    lock = threading.Lock()

    def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
        # moto signs with a fixed, unknown "ak" whatever the role; sign as the user named
        # like the state machine's role (the stack's state machine principal) if there
        # is one, else as the engine
        role = str(getattr(state_credentials, "role_arn", "") or "")
        key = user_key(role.rsplit("/", 1)[-1]) if role else None
        key = key or engine_key
        with lock:
            cache_key = (region, service, key[0] if key else "")
            if cache_key not in clients:
                client = original(region, service)
                if key is not None:
                    client = _resigned(client, region, service, key)
                clients[cache_key] = client
            return clients[cache_key]

    boto_client.boto_client_for = boto_client_for
    for module in list(sys.modules.values()):  # modules that imported it by name already
        if getattr(module, "boto_client_for", None) is original:
            setattr(module, "boto_client_for", boto_client_for)  # noqa: B010


_ASL_EVAL_LOGGER = "moto.stepfunctions.parser.asl.component.eval_component"


def _absent_choice_variable(record: logging.LogRecord) -> bool:
    """Keep every log line of moto's ASL engine but one: the ERROR it logs each time a
    Choice's `IsPresent` test reads a path that is absent (how the test learns the answer;
    a plain task's input has no `secure_aggregation`). Any real failure still fails the
    execution, which the stack reports from its status and history."""
    text = record.getMessage()
    return not (text.startswith("Exception=NoSuchJsonPathError") and "StringJsonPath" in text)


def main(argv: list[str]) -> int:
    host, port = argv[0], int(argv[1])
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    logging.getLogger(_ASL_EVAL_LOGGER).addFilter(_absent_choice_variable)
    cache_module_list()
    moto_speed.cache_method_names()
    moto_speed.cache_camelcase()
    given = os.environ.pop(ENV_ADMIN_KEY, "")
    identities = Identities(tuple(given.split(":", 1)) if ":" in given else None)  # type: ignore[arg-type]
    identities.ensure()
    reuse_step_functions_parts(identities.keys[ENGINE_USER])
    if os.environ.get(ENV_ENFORCE_IAM) == "1":
        from moto import settings

        # moto's IAM access control: every request must be signed by a known key and
        # be allowed by its user's policies (actions; resources for S3 and SQS)
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    roll_back_in_place()  # safe only with DynamoDB requests serialized (below)
    moto_limits.install()
    # what moto's ThreadedMotoServer does, with the bind in this thread: a port in use
    # fails here, with its error, instead of leaving the parent waiting
    app = serialize_dynamodb(quotas.enforce_quotas(DomainDispatcherApplication(create_backend_app)))
    app = recreate_after_reset(app, identities)
    if os.environ.get(ENV_AUDIT_LOG):
        app = record_calls(app, os.environ[ENV_AUDIT_LOG])
        announce_engine(os.environ[ENV_AUDIT_LOG], identities.keys[ENGINE_USER][0])
    if os.environ.get(ENV_ADMIN_TOKEN):
        app = guard_management(app, os.environ.pop(ENV_ADMIN_TOKEN))
    if os.environ.get(ENV_TIMING_LOG):  # bench/scale.py --profile
        app = time_requests(app, os.environ[ENV_TIMING_LOG])
    server = make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)
    bound = int(server.server_address[1])
    # moto's Step Functions engine calls the other services at localhost:$MOTO_PORT
    os.environ["MOTO_PORT"] = str(bound)
    thread = threading.Thread(target=server.serve_forever, name="moto-server", daemon=True)
    thread.start()
    admin_key, admin_secret = identities.keys[ADMIN_USER]
    print(json.dumps({"port": bound, "admin": [admin_key, admin_secret]}), flush=True)
    try:
        sys.stdin.read()  # returns at EOF: stop requested, or the parent is gone
    except KeyboardInterrupt:  # Ctrl-C in `local up` reaches the whole process group
        pass
    finally:
        server.shutdown()
        thread.join(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

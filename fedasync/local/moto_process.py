"""The moto server process: `python -m fedasync.local.moto_process HOST PORT`.

Prints the bound port on stdout once it serves, then serves until its stdin closes: the
parent closes it to stop the server, and the pipe also closes when the parent dies.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

WsgiApp = Callable[[dict[str, Any], Any], Iterable[bytes]]


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


def snapshot_tables_once() -> None:
    """moto's TransactWriteItems deep-copies the whole table (its items and its stream)
    as a rollback snapshot once per operation of the transaction, before applying any:
    the copies are identical and only one is kept. Take it once per table instead: the
    same rollback, and a transaction of n operations costs one copy, not n (measured: the
    copies were most of moto's CPU in a long async run, and grow with the table)."""
    import copy

    from moto.dynamodb import models
    from moto.dynamodb.models.table import Table

    class _CopyOncePerTable:
        """Stands in for the `copy` module inside moto's DynamoDB backend."""

        snapshots: dict[int, Any] | None = None  # per transaction (requests are serialized)

        @classmethod
        def deepcopy(cls, value: Any, memo: Any = None) -> Any:
            if cls.snapshots is None or not isinstance(value, Table):
                return copy.deepcopy(value, memo)
            if id(value) not in cls.snapshots:
                cls.snapshots[id(value)] = copy.deepcopy(value, memo)
            return cls.snapshots[id(value)]

    original = models.DynamoDBBackend.transact_write_items

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        _CopyOncePerTable.snapshots = {}
        try:
            original(self, transact_items)
        finally:
            _CopyOncePerTable.snapshots = None

    models.copy = _CopyOncePerTable  # type: ignore[assignment,attr-defined]
    models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def cache_module_list() -> None:
    """moto's dispatcher lists its own package directory (a `listdir` and an `isdir` per
    module, ~150) on every request to route it, under a lock every request takes: measured
    at about 6 % of the server's CPU in a sync round. The list cannot change while the
    server runs; list it once."""
    from moto import backends

    modules = frozenset(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules


def reuse_step_functions_parts() -> None:
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
    clients: dict[tuple[str, str], Any] = {}
    lock = threading.Lock()

    def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
        if state_credentials is not None:  # a role to assume: not ours to share
            return original(region, service, state_credentials)
        with lock:
            if (region, service) not in clients:
                clients[(region, service)] = original(region, service)
            return clients[(region, service)]

    boto_client.boto_client_for = boto_client_for
    for module in list(sys.modules.values()):  # modules that imported it by name already
        if getattr(module, "boto_client_for", None) is original:
            setattr(module, "boto_client_for", boto_client_for)  # noqa: B010


def main(argv: list[str]) -> int:
    host, port = argv[0], int(argv[1])
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    cache_module_list()
    reuse_step_functions_parts()
    snapshot_tables_once()  # safe only with DynamoDB requests serialized (below)
    # what moto's ThreadedMotoServer does, with the bind in this thread: a port in use
    # fails here, with its error, instead of leaving the parent waiting
    app = serialize_dynamodb(DomainDispatcherApplication(create_backend_app))
    server = make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)
    bound = int(server.server_address[1])
    # moto's Step Functions engine calls the other services at localhost:$MOTO_PORT
    os.environ["MOTO_PORT"] = str(bound)
    thread = threading.Thread(target=server.serve_forever, name="moto-server", daemon=True)
    thread.start()
    print(bound, flush=True)
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

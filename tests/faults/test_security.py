"""Security properties: no pickle anywhere, clients confined by IAM, no secrets in logs.

The client role's confinement (its own S3 prefix, its own queue, record-shaped items
only) is asserted on the synthesised policy document in tests/cdk/test_client_policy.py;
here only the link between that policy and the server's verdict attributes is checked.
"""

from __future__ import annotations

import ast
import asyncio
import io
import json
import logging
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from fedasync import logs
from fedasync.core import keys
from fedasync.core.config import TaskConfig
from fedasync.core.decisions import VERDICT_ATTRIBUTES
from fedasync.deployment import Deployment
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import ClientSpec
from fedasync.server.tasks import start_task
from tests.integration.test_server_sync import (
    clients_for,
    initial_model,
    run_client,
    store_for,
    wait_execution,
)

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("fedasync", "client", "server_lambdas", "infra", "examples")
SKIPPED_DIRS = {"build", "cdk.out", "node_modules", "__pycache__", ".venv"}

# --- no pickle --------------------------------------------------------------------------

# Modules whose loaders run code from the bytes they read.
UNSAFE_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "cloudpickle",
    "joblib",
    "marshal",
    "shelve",
}
NUMPY_NAMES = {"np", "numpy"}


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _call_problems(call: ast.Call) -> Iterator[str]:
    name = _dotted(call.func)
    head, _, tail = name.rpartition(".")
    allow = _keyword(call, "allow_pickle")
    if allow is not None and not _is_const(allow, False):
        yield f"{name}(allow_pickle=...) not False"
    if tail == "load" and head in NUMPY_NAMES and not _is_const(allow, False):
        yield f"{name}( without allow_pickle=False"
    if name in ("torch.load",) and not _is_const(_keyword(call, "weights_only"), True):
        yield "torch.load( without weights_only=True"
    if tail == "read_pickle":
        yield f"{name}("
    if _is_const(_keyword(call, "safe_mode"), False):
        yield f"{name}(safe_mode=False)"


def scan_source(text: str, where: str) -> list[str]:
    """Every way `text` could deserialise with pickle; comments and strings do not count."""
    problems: list[str] = []
    tree = ast.parse(text, filename=where)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            problems += [
                f"import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES
            ]
        elif (
            isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES
        ):
            problems.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            problems += list(_call_problems(node))
    # Any code token naming an unsafe module (e.g. `__import__("pickle")` is a string,
    # but `importlib.import_module(name)` cannot be seen; a NAME token can).
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.NAME and tok.string in UNSAFE_MODULES:
            problems.append(f"name {tok.string!r} in code")
        if tok.type == tokenize.STRING and tok.string.strip("'\"rb") in UNSAFE_MODULES:
            problems.append(f"module name {tok.string} as a string (dynamic import?)")
    return [f"{where}:{p}" for p in sorted(set(problems))]


def source_files() -> Iterator[Path]:
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if not SKIPPED_DIRS & set(path.relative_to(ROOT).parts):
                yield path


def test_no_code_path_deserialises_with_pickle():
    files = list(source_files())
    assert len(files) > 30, "the scan must actually see the package"
    problems = [
        p for f in files for p in scan_source(f.read_text("utf-8"), str(f.relative_to(ROOT)))
    ]
    assert problems == []


PLANTED = {
    "import pickle\n": "import pickle",
    "import dill as d\n": "import dill",
    "from joblib import load\n": "from joblib import",
    "import numpy as np\nx = np.load('a.npy')\n": "np.load( without allow_pickle=False",
    "import numpy\nx = numpy.load('a.npz', allow_pickle=True)\n": "allow_pickle=...) not False",
    "import numpy as np\nx = np.load('a', allow_pickle=flag)\n": "not False",
    "import torch\nm = torch.load('m.pt')\n": "torch.load( without weights_only=True",
    "import pandas as pd\nd = pd.read_pickle('x')\n": "pd.read_pickle(",
    "import keras\nm = keras.models.load_model('m', safe_mode=False)\n": "safe_mode=False",
    "import importlib\nm = importlib.import_module('marshal')\n": "as a string",
    "x = obj.pickle.loads(b'')\n": "name 'pickle' in code",
}


@pytest.mark.parametrize("source", PLANTED, ids=list(PLANTED.values()))
def test_the_scanner_catches_a_planted_violation(source):
    problems = scan_source(source, "planted.py")
    assert any(PLANTED[source] in p for p in problems), problems


def test_the_scanner_allows_safe_loads_and_mentions_in_prose():
    clean = (
        '"""Never pickle: safetensors only; never np.load(allow_pickle=True)."""\n'
        "import numpy as np\n"
        "# pickle is refused, see codec._sniff\n"
        "x = np.load('a.npz', allow_pickle=False)\n"
        "import torch\n"
        "m = torch.load('m.pt', weights_only=True)\n"
        "msg = f'{who} is a pickle payload; refused'\n"
    )
    assert scan_source(clean, "clean.py") == []


def test_a_client_role_cannot_write_the_server_verdict_attributes():
    """A forged 'verdict' on an update item would be trusted as the server's own decision;
    the client role's `dynamodb:Attributes` allow-list (tests/cdk/test_client_policy.py
    checks the synthesised policy uses it) must therefore exclude every one of them."""
    pytest.importorskip("aws_cdk")
    from infra.client_access import CLIENT_ITEM_ATTRIBUTES

    assert not set(VERDICT_ATTRIBUTES) & set(CLIENT_ITEM_ATTRIBUTES)
    assert not {"token", "task_token", "head_version", "head_sha256", "members", "closed"} & set(
        CLIENT_ITEM_ATTRIBUTES
    )


# --- logs never hold a credential or a task token in full -----------------------------

SECRET = "fedasyncSECRET0123456789abcdefghijKLMNOP/+"  # shaped like an AWS secret key


@pytest.fixture
def captured_logs(monkeypatch) -> Iterator[io.StringIO]:
    """JSON logs of everything in this process into a buffer; the old setup comes back."""
    saved_config = structlog.get_config()
    saved_flag = logs._configured
    buffer = io.StringIO()
    # the stream itself, not sys.stderr: pytest sets its own sys.stderr again for the call
    logs.configure(level="INFO", json=True, force=True, stream=buffer)
    try:
        yield buffer
    finally:
        structlog.configure(**saved_config)
        logs._configured = saved_flag


def test_redaction_masks_secret_keys_and_known_values(captured_logs, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    token = "AAAAKgAAAAIAAAAAAAAAA" + "x9Z" * 60  # a Step Functions task token's shape
    logs.remember_secret("uuid-like-token-1234")
    log = structlog.get_logger()
    log.info("probe.keys", task_token="uuid-like-token-1234", aws_secret_access_key=SECRET, count=3)
    log.info("probe.values", detail=f"call failed for {token} with key {SECRET}")
    log.info(
        "probe.nested", payload={"Authorization": "AWS4-HMAC-SHA256 Credential=abc", "ok": [1]}
    )
    out = captured_logs.getvalue()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [e["event"] for e in lines] == ["probe.keys", "probe.values", "probe.nested"]
    for needle in ("uuid-like-token-1234", SECRET, token, "Credential=abc"):
        assert needle not in out
    assert lines[0]["task_token"].endswith("…(redacted)")
    assert lines[0]["count"] == 3
    assert lines[2]["payload"]["ok"] == [1]


async def test_logs_of_a_sync_and_an_async_run_hold_no_token_or_secret(
    moto_server, prefix, captured_logs, monkeypatch, caplog
):
    caplog.set_level(logging.INFO)  # the standard library's records too (boto, moto)
    # GIVEN JSON logs captured, a distinctive AWS secret key in the environment, and a
    # stack running one sync task (1 round) and one async task (2 versions), 2 clients
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    ids = ("a", "b")
    spec = Deployment(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in ids))
    sync_cfg = TaskConfig.parse(
        {"task_name": "sec-sync", "clients": list(ids), "rounds": 1, "round_timeout_s": 60}
    )
    async_cfg = TaskConfig.parse(
        {"task_name": "sec-async", "mode": "async", "clients": list(ids), "max_versions": 2}
    )
    async with EmbeddedStack(spec, endpoint_url=moto_server.endpoint_url) as stack:
        store = store_for(stack)
        machine = stack.endpoints.state_machine_arn
        # WHEN both run to the end with scripted clients
        arn = await start_task(store, machine, sync_cfg, initial_model())
        clients = clients_for(stack, ids, (10, 30))
        await asyncio.wait_for(asyncio.gather(*(run_client(c) for c in clients)), 60)
        assert (await wait_execution(stack, arn))["status"] == "SUCCEEDED"
        arn = await start_task(store, machine, async_cfg, initial_model())
        await asyncio.wait_for(asyncio.gather(*(run_client(c) for c in clients)), 60)
        assert (await wait_execution(stack, arn))["status"] == "SUCCEEDED"
        round_item = await store.get_item("sec-sync", keys.round_sk(0))
        task_item = await store.get_task("sec-async")
    tokens = [round_item["token"], task_item["token"]]
    out = captured_logs.getvalue() + caplog.text
    # THEN the run was logged (the check below cannot pass on an empty log) ...
    events = [json.loads(line)["event"] for line in out.splitlines() if line.startswith("{")]
    for expected in ("round.opened", "round.closed", "task.opened", "update.accepted"):
        assert expected in events
    # ... and no task token nor the secret key appears in full, anywhere
    for needle in (*tokens, SECRET):
        assert len(needle) >= 8
        assert needle not in out, f"{needle[:6]}… leaked into the logs"

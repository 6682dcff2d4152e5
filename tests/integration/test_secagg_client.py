"""SecAgg through the real client loop: `run_client` silos (poller, heartbeat, trainer,
the SecAgg part) on the embedded stack with the real ASL and handlers, numpy trainer.

The oracle: each silo's input is n_u · Δ_u from the plain path's own training (the
trainer's `fit` on the round's global, one epoch, the sync round's seed), computed here
from the trainer directly; the stored sum is Σ over the survivors within |U| · step / 2
per coordinate (step = R / Q, Q = floor((2^31 - 1) / silos), R the clip).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from structlog.testing import capture_logs
from typer.testing import CliRunner

from client.cli import client_app
from client.config import ClientConfig
from client.data import demo_silo
from client.keys import load_key, public_b64, write_new_key
from client.run import run_client
from client.trainers.numpy_trainer import NumpyTrainer
from client.worker import training_seed
from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.core.replay import replay
from fedasync.core.replay_secagg import sum_key
from fedasync.core.secagg.notice import server_key
from fedasync.deployment import Deployment
from fedasync.local.stack import EmbeddedStack
from fedasync.ops.events import export_ledger, export_objects, folder_loader
from fedasync.resources import ClientSpec
from fedasync.server.tasks import start_task
from tests.integration.test_server_sync import store_for, wait_execution

SILOS = ("bank-1", "bank-2", "bank-3", "bank-4", "bank-5")
CLIP = 1000.0  # no coordinate of n · Δ comes near it: nothing is clipped
STEP = CLIP / (((1 << 31) - 1) // len(SILOS))


@pytest.fixture
async def stack(moto_server, prefix):
    spec = Deployment(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in SILOS))
    async with EmbeddedStack(spec, endpoint_url=moto_server.endpoint_url) as s:
        yield s


def data_of(client_id: str):
    return demo_silo(SILOS.index(client_id), len(SILOS), alpha=0.5, seed=0)[0]


def client_config(stack, client_id: str, **over: Any) -> ClientConfig:
    creds = stack.credentials(f"client:{client_id}")
    fields: dict[str, Any] = {
        "task_name": "vault",
        "client_id": client_id,
        "endpoint_url": stack.endpoints.endpoint_url,
        "prefix": stack.spec.prefix,
        "heartbeat_interval_s": 0.5,
        "visibility_timeout_s": 5,
        "wait_time_s": 1,
        "queue_url": stack.endpoints.client_queue_urls[client_id],
        "aws_access_key_id": creds.access_key_id,
        "aws_secret_access_key": creds.secret_access_key,
    }
    return ClientConfig(**(fields | over))


def task_config(identities: dict[str, str], **fields: Any) -> TaskConfig:
    """One SecAgg round of the five banks (threshold 3), with any other task fields."""
    return TaskConfig.parse(
        {
            "task_name": "vault",
            "clients": list(SILOS),
            "rounds": 1,
            "round_check_s": 1,
            "secure_aggregation": {
                "threshold": 3,
                "clip": CLIP,
                "phase_timeout_s": 15,
                "identities": identities,
            },
            **fields,
        }
    )


def plain_input(global_w, client_id: str) -> np.ndarray:
    """n_u · Δ_u of the plain path's training of round 0 (the oracle's plaintext)."""
    data = data_of(client_id)
    seed = training_seed(0, client_id, 0)
    local = NumpyTrainer().fit(global_w, data.x, data.y, epochs=1, seed=seed).weights
    n = len(data)
    return np.concatenate(
        [
            (local[k].astype(np.float64) - w.astype(np.float64)).ravel() * n
            for k, w in global_w.items()
        ]
    )


async def run_task(stack, tmp_path, keyless: tuple[str, ...] = ()):
    key_files = {c: tmp_path / f"{c}.pem" for c in SILOS}
    identities = {c: write_new_key(p) for c, p in key_files.items()}
    cfg = task_config(identities)
    initial = NumpyTrainer().init_weights(seed=0)
    store = store_for(stack)
    arn = await start_task(store, stack.endpoints.state_machine_arn, cfg, initial)
    runs = [
        run_client(
            client_config(
                stack,
                c,
                secagg_key=None if c in keyless else key_files[c],
                secagg_identities=cfg.secure_aggregation.identities,
            ),
            trainer=NumpyTrainer(),
            data=data_of(c),
        )
        for c in SILOS
    ]
    with capture_logs() as logs:
        silos = asyncio.gather(*runs)
        desc = await wait_execution(stack, arn, timeout_s=150)
        reports = await asyncio.wait_for(silos, 120)
    # no log line holds a silo's private key, in any form it exists in
    scanned = json.dumps(logs, default=str)
    for path in key_files.values():
        raw = load_key(path).private_bytes_raw()
        pem_body = path.read_text().splitlines()[1]
        assert not [
            f for f in (raw.hex(), base64.b64encode(raw).decode(), pem_body) if f in scanned
        ]
    result = (await store.get_item("vault", keys.round_sk(0)))["result"]
    return store, desc, reports, result, initial


async def test_five_real_client_loops_run_a_secagg_round_to_success(stack, tmp_path):
    # GIVEN a sync task with secure aggregation and 5 silos, each the real client loop
    # with its own identity key (keygen's file) and the task config's identities
    # WHEN the task runs its round
    store, desc, reports, result, initial = await run_task(stack, tmp_path)
    # THEN the task succeeded and every silo survived the round
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    assert result["secagg"]["survivors"] == list(SILOS)
    assert result["secagg"]["dropped"] == [] and result["secagg"]["rejected"] == {}
    assert result["secagg"]["examples"] == sum(len(data_of(c)) for c in SILOS)
    # AND every silo ran to the final notice, answering the 5 phases, uploading no plain update
    assert [r.outcome for r in reports] == ["final"] * 5
    assert all(r.secagg_answers >= 5 and r.updates == [] for r in reports)
    # AND the stored sum is Σ n_u · Δ_u of the plain path's training, within quantisation
    blob = await store.get_object(server_key("vault", 0, "sum").replace(".json", ".safetensors"))
    assert codec.sha256_bytes(blob) == result["secagg"]["sum_sha256"]
    got = codec.decode(blob)["sum"]
    exact = sum(plain_input(initial, c) for c in SILOS)
    bound = len(SILOS) * STEP / 2 + 1e-9
    assert np.max(np.abs(got[:-1] - exact)) <= bound
    # WHEN the task is replayed from its exported ledger and objects
    events = await export_ledger(store, "vault")
    folder = tmp_path / "objects"
    await export_objects(store, events, folder)
    replayed = replay(events, folder_loader(folder))
    # THEN the round is rebuilt from the recorded sum to the recorded version, bit for bit
    assert replayed.ok, replayed.problems
    assert [(c.version, c.recorded) for c in replayed.checks] == [(1, result["sha256"])]
    # AND an altered sum fails the replay, saying so
    stored = folder / sum_key("vault", 0)
    altered = codec.encode({"sum": got + np.eye(1, got.size, 0).ravel()})
    stored.write_bytes(altered)
    problems = replay(events, folder_loader(folder)).problems
    assert any("SecAgg round 0" in p and "the sum was altered" in p for p in problems)
    # AND so does a missing one
    stored.unlink()
    problems = replay(events, folder_loader(folder)).problems
    assert any("SecAgg round 0" in p and "cannot be read" in p for p in problems)


async def test_a_silo_without_a_key_is_refused_with_one_error_line_and_dropped(
    stack, tmp_path, capsys
):
    # GIVEN the same task, bank-5 started without --secagg-key
    _, desc, reports, result, _ = await run_task(stack, tmp_path, keyless=("bank-5",))
    # THEN the round closed without it: the 4 others are the survivors
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    assert result["secagg"]["survivors"] == list(SILOS[:4])
    assert "bank-5" not in result["secagg"]["survivors"]
    # AND bank-5 said why, once, in one `error:` line (no traceback), and ran on to the end
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "no SecAgg identity key" in lines[0] and "--secagg-key" in lines[0]
    assert "Traceback" not in err
    assert reports[4].outcome == "final" and reports[4].secagg_refused == 1


def test_keygen_writes_a_0600_pem_prints_its_public_key_and_never_overwrites(tmp_path):
    # GIVEN no key file yet
    out = tmp_path / "silo.pem"
    # WHEN keygen runs
    first = CliRunner().invoke(client_app, ["keygen", "--out", str(out)])
    # THEN the file is a PEM Ed25519 key readable by its owner only
    assert first.exit_code == 0, first.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    key = load_pem_private_key(out.read_bytes(), password=None)
    # AND the printed key is its public key: 32 raw bytes, base64, that load back
    printed = first.output.strip().splitlines()[-1]
    assert len(base64.b64decode(printed, validate=True)) == 32
    assert printed == public_b64(key)
    TaskConfig.parse(
        {
            "task_name": "vault",
            "clients": ["a", "b", "c"],
            "secure_aggregation": {"threshold": 2, "identities": {"a": printed}},
        }
    )
    # AND the private key is not what was printed
    assert out.read_text().split("\n")[1] not in first.output
    # WHEN keygen runs again on the same path
    before = out.read_bytes()
    second = CliRunner().invoke(client_app, ["keygen", "--out", str(out)])
    # THEN it refuses with one error line and the key is untouched
    assert second.exit_code == 1
    assert "error:" in second.output and "never overwrites" in second.output
    assert out.read_bytes() == before

"""Secure aggregation on the embedded stack: the real ASL's SecAgg phases on moto, the real
control handler, silos (client/secagg.py) that only pull, under their own IAM principals.

The oracles are computed here from the stated formulas with Python integers: each silo's
input x_u = (n_u · Δ_u, n_u · step) quantised as q = round(clip(x) · Q / R) with
Q = floor((2^31 - 1) / 5) and step = R / Q; the round's sum is Σ q · step over U3; the new
global model w + Σ n_u Δ_u / N within |U3| · step / 2 / N per coordinate.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from typing import ClassVar

import numpy as np
import pytest
import safetensors.numpy
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from structlog.testing import capture_logs

from client.secagg import SecAggSilo
from fedasync.core import codec, keys
from fedasync.core.config import TaskConfig
from fedasync.core.secagg.notice import Phase, SecAggNotice, server_key
from fedasync.deployment import Deployment
from fedasync.local.stack import EmbeddedStack
from fedasync.resources import ClientSpec
from fedasync.server.tasks import start_task
from tests.integration.test_server_sync import store_for, wait_execution

SILOS = ("bank-1", "bank-2", "bank-3", "bank-4", "bank-5")
EXAMPLES = dict(zip(SILOS, (10, 20, 30, 40, 50), strict=True))
CLIP = 1.0
LEVELS = ((1 << 31) - 1) // len(SILOS)  # Q for 5 silos in a 32-bit ring
STEP = CLIP / LEVELS


def initial_model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "dense/kernel": rng.normal(size=(40, 50)).astype(np.float32),
        "dense/bias": np.zeros(50, np.float32),
    }


def local_model(global_w: dict[str, np.ndarray], client_id: str) -> dict[str, np.ndarray]:
    """A fake training step: a silo-specific delta, |n_u · Δ_u| < 1 = clip (no clipping)."""
    rng = np.random.default_rng(SILOS.index(client_id) + 100)
    return {
        name: (w + rng.uniform(-0.018, 0.018, w.shape)).astype(np.float32)
        for name, w in global_w.items()
    }


def plain_input(client_id: str) -> list[float]:
    """x_u as floats, from the silo's own float32 models (the oracle's plaintext)."""
    g = initial_model()
    local = local_model(g, client_id)
    n = EXAMPLES[client_id]
    out = [
        (float(a) - float(b)) * n
        for name in g
        for a, b in zip(local[name].ravel().tolist(), g[name].ravel().tolist(), strict=True)
    ]
    return [*out, n * STEP]


def quantised_sum(survivors: list[str]) -> list[float]:
    """Σ_u round(x_u · Q / R) · step, by hand (Python ints; x_u is inside [-R, R])."""
    inputs = [plain_input(c) for c in survivors]
    return [
        sum(round(x * LEVELS / CLIP) for x in coords) * STEP for coords in zip(*inputs, strict=True)
    ]


def identities() -> tuple[dict[str, Ed25519PrivateKey], dict[str, bytes]]:
    private = {c: Ed25519PrivateKey.generate() for c in SILOS}
    public = {
        c: k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) for c, k in private.items()
    }
    return private, public


@pytest.fixture
async def stack(moto_server, prefix):
    spec = Deployment(prefix=prefix, clients=tuple(ClientSpec(client_id=c) for c in SILOS))
    async with EmbeddedStack(spec, endpoint_url=moto_server.endpoint_url) as s:
        yield s


class ASilo(SecAggSilo):
    """A silo of the test: keeps its sessions' secrets (to look for them in logs and
    items: the test's view, not the silo's), and, if `wrong`, alters one share it reveals."""

    wrong: bool = False
    secrets: ClassVar[list[bytes]] = []
    puts: ClassVar[dict[str, list[bytes]]] = {}

    async def _put(self, notice, blob):
        self.puts.setdefault(f"{self.client_id}/{notice.phase}", []).append(blob)
        await super()._put(notice, blob)

    def _session(self, notice):
        session = super()._session(notice)
        self.secrets = [
            session._seed,
            session._channel.private_bytes_raw(),
            session._mask.private_bytes_raw(),
        ]
        return session

    async def _answer(self, notice, session):
        body = await super()._answer(notice, session)
        if self.wrong and notice.phase == "unmask":
            share = bytearray(base64.b64decode(body["shares"][0]["share"]))
            share[-1] ^= 1
            body["shares"][0]["share"] = base64.b64encode(bytes(share)).decode()
        return body


def silos_for(stack, private, public, wrong: str | None = None) -> dict[str, ASilo]:
    e = stack.endpoints
    ASilo.puts = {}
    out = {}
    for c in SILOS:
        aws = stack.principal_aws(f"client:{c}")
        out[c] = ASilo(aws, e.bucket, c, private[c], public, _train(c))
        out[c].wrong = c == wrong
    return out


def _train(client_id):
    async def train(global_w):
        return local_model(global_w, client_id), EXAMPLES[client_id]

    return train


async def run_silo(stack, silo: SecAggSilo, stop_at: Phase | None) -> None:
    """Answer every notice of the silo's queue, until (and not from) phase `stop_at`."""
    stopped = False
    sqs = await silo.aws.sqs()
    url = stack.endpoints.client_queue_urls[silo.client_id]
    while True:
        resp = await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1, MaxNumberOfMessages=1)
        for msg in resp.get("Messages", []):
            body = json.loads(msg["Body"])
            if body.get("kind") == "secagg_phase":
                notice = SecAggNotice.parse(body)
                stopped = stopped or notice.phase == stop_at
                if not stopped:  # twice: as a redelivered notice would be
                    await silo.answer(notice)
                    await silo.answer(notice)
            await sqs.delete_message(QueueUrl=url, ReceiptHandle=msg["ReceiptHandle"])


def task_config(public, **secagg) -> TaskConfig:
    return TaskConfig.parse(
        {
            "task_name": "vault",
            "clients": list(SILOS),
            "rounds": 1,
            "round_check_s": 1,
            "secure_aggregation": {
                "threshold": 3,
                "clip": CLIP,
                "phase_timeout_s": 4,
                "identities": {c: base64.b64encode(k).decode() for c, k in public.items()},
                **secagg,
            },
        }
    )


async def run_round(stack, stops: dict[str, Phase], wrong: str | None = None):
    private, public = identities()
    silos = silos_for(stack, private, public, wrong)
    store = store_for(stack)
    with capture_logs() as logs:
        arn = await start_task(
            store, stack.endpoints.state_machine_arn, task_config(public), initial_model()
        )
        runners = [asyncio.create_task(run_silo(stack, s, stops.get(c))) for c, s in silos.items()]
        try:
            desc = await wait_execution(stack, arn, timeout_s=120)
        finally:
            for r in runners:
                r.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
    return store, desc, logs, silos


async def objects_of(stack, store) -> dict[str, bytes]:
    s3 = await stack.aws.s3()
    listed = await s3.list_objects_v2(Bucket=stack.endpoints.bucket, Prefix="vault/")
    return {o["Key"]: await store.get_object(o["Key"]) for o in listed.get("Contents", [])}


async def test_five_silos_one_drops_before_one_after_masked_input_give_the_survivors_sum(stack):
    # GIVEN a sync task of 5 silos with secure aggregation (t = 3, clip 1, 32-bit ring)
    # WHEN bank-2 stops before its masked input and bank-4 right after it (no consistency,
    # no unmask), the others answer every phase
    store, desc, logs, silos = await run_round(
        stack, {"bank-2": "masked_input", "bank-4": "consistency"}
    )
    # THEN the round closed and the task succeeded at version 1
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    item = await store.get_item("vault", keys.round_sk(0))
    result = item["result"]
    survivors = ["bank-1", "bank-3", "bank-4", "bank-5"]
    assert result["secagg"]["survivors"] == survivors
    assert result["secagg"]["dropped"] == ["bank-2"]
    assert result["secagg"]["rejected"] == {}
    assert result["secagg"]["examples"] == 10 + 30 + 40 + 50
    # AND the unmasked sum is the survivors' quantised sum (hand oracle), exactly
    stored_sum = await store.get_object(
        server_key("vault", 0, "sum").replace(".json", ".safetensors")
    )
    assert codec.sha256_bytes(stored_sum) == result["secagg"]["sum_sha256"]
    got_sum = codec.decode(stored_sum)["sum"]
    np.testing.assert_array_equal(got_sum, np.array(quantised_sum(survivors)))
    # AND the new global model is FedAvg of the survivors within the quantisation error
    g = initial_model()
    n = sum(EXAMPLES[c] for c in survivors)
    bound = len(survivors) * STEP / 2 / n
    new = codec.decode(await store.get_object(keys.global_key("vault", 1)))
    for name in g:
        exact = sum(EXAMPLES[c] * local_model(g, c)[name].astype(np.float64) for c in survivors) / n
        err = np.abs(new[name].astype(np.float64) - exact)
        assert np.all(err <= bound + np.spacing(np.abs(exact).astype(np.float32))), name
    # AND a notice answered twice got the very same bytes twice (one session, one answer)
    assert ASilo.puts and all(len(set(b)) == 1 and len(b) == 2 for b in ASilo.puts.values())
    # AND no stored object of the round is a plaintext update: each masked input's
    # correlation with its silo's input is ~0 (below 5 / sqrt(d))
    objects = await objects_of(stack, store)
    d = 40 * 50 + 50 + 1
    for c in survivors:
        masked = objects[f"vault/local/{c}/secagg-00000000-masked_input.safetensors"]
        vec = safetensors.numpy.load(masked)["masked_input"].astype(np.float64)
        plain = np.array(plain_input(c))
        assert abs(np.corrcoef(vec, plain)[0, 1]) < 5 / math.sqrt(d)
    # AND no log line and no item holds a silo's secret (seed, private keys) or a share
    secrets = secrets_of(objects) + [
        form for silo in silos.values() for raw in silo.secrets for form in forms(raw)
    ]
    scanned = json.dumps(logs, default=str) + json.dumps(await all_items(stack), default=str)
    assert secrets and not [s for s in secrets if s in scanned]


async def test_a_wrong_share_in_unmask_names_its_sender_and_the_round_still_closes(stack):
    # GIVEN 5 silos, bank-3 alters a share it reveals in the unmask phase
    store, desc, _, _ = await run_round(stack, {}, wrong="bank-3")
    # THEN bank-3 is named (its shares ignored) and the 4 others' shares rebuild the sum
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    result = (await store.get_item("vault", keys.round_sk(0)))["result"]
    assert result["secagg"]["rejected"] == {"bank-3": "secagg_bad_share"}
    assert result["secagg"]["survivors"] == list(SILOS)


async def test_below_the_threshold_the_round_fails_with_that_cause(stack):
    # GIVEN t = 3 WHEN 3 of the 5 silos stop before their masked input
    stops = {c: "masked_input" for c in ("bank-1", "bank-2", "bank-3")}
    store, desc, _, _ = await run_round(stack, stops)
    # THEN the task fails with secagg_below_threshold naming the phase and the count
    assert desc["status"] == "FAILED"
    cause = (
        "secagg_below_threshold: round 0 of task 'vault', phase masked_input: masked input: "
        "2 silos, below the threshold t=3; the round cannot go on"
    )
    assert desc.get("cause") == cause
    task = await store.get_task("vault")
    assert task["cause"] == cause and int(task["head_version"]) == 0


def secrets_of(objects: dict[str, bytes]) -> list[str]:
    """The revealed shares (base64, as they travel), the only secrets the test can see
    without opening a session: they must stay in the silos' answer objects."""
    out = []
    for key, blob in objects.items():
        if "/local/" in key and key.endswith("-unmask.json"):
            out += [s["share"] for s in json.loads(blob)["shares"]]
    return out


def forms(raw: bytes) -> list[str]:
    return [raw.hex(), base64.b64encode(raw).decode()]


async def all_items(stack) -> list[dict]:
    ddb = await stack.aws.dynamodb()
    items = []
    for table in (stack.endpoints.table, stack.endpoints.server_table):
        items += (await ddb.scan(TableName=table)).get("Items", [])
    return items

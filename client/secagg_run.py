"""The run's SecAgg part: `secagg_phase` notices from the poller, answered by a `SecAggSilo`.

The poller hands each SecAgg notice here (never to the inbox: a phase is not a global
version). One notice at a time: the silo answers it (the masked input carries the local
update the run's trainer produces from the round's global model, as the plain path
trains it) and only then is the message deleted; a redelivered notice gets the same
bytes again. Its message is kept invisible by the heartbeat while it is worked on.
The peers' identities are the task config's `secure_aggregation.identities` (the silo's
`secagg_identities`), the silo's own key its `secagg_key`. Without a key a notice is
refused with one `error:` line and deleted: the silo is dropped from that round, which
the protocol survives.
"""

from __future__ import annotations

import sys

import structlog

from client.keys import decode_identities, load_key
from client.privacy import local_dp
from client.secagg import SecAggSilo
from client.state import RunState
from client.worker import train
from fedasync.aws.session import AwsContext
from fedasync.core.codec import Weights
from fedasync.core.messages import GlobalModelNotice
from fedasync.core.secagg.notice import SecAggNotice

log = structlog.get_logger()


class RoundTrainer:
    """The silo's `train`: the run's trainer on the round's global model, as the plain
    path trains a sync round (the same seed, epochs and data, FedProx's mu; version =
    round), then local DP if the task asks for it (`client.privacy.local_dp`)."""

    def __init__(self, state: RunState) -> None:
        self.state = state
        self.notice: SecAggNotice | None = None

    async def __call__(self, global_w: Weights) -> tuple[Weights, int]:
        notice = self.notice
        assert notice is not None  # set by secagg_loop before each answer
        plain = GlobalModelNotice(
            task_name=notice.task_name,
            mode="sync",
            version=notice.round_id,
            round_id=notice.round_id,
            s3_key=notice.s3_key,
            sha256=notice.sha256,
            size_bytes=0,
            incarnation=notice.incarnation,
            proximal_mu=notice.proximal_mu,
            privacy=notice.privacy if notice.privacy and notice.privacy.mode == "local" else None,
        )
        self.state.phases["trainer"] = "training"
        try:
            weights, examples, _ = await train(self.state, global_w, plain)
            # local DP: clipped and noised here, before it is masked (as before upload)
            weights, _ = await local_dp(self.state, plain, global_w, weights, examples)
        finally:
            self.state.phases.pop("trainer", None)
        return weights, examples


def secagg_silo(state: RunState, aws: AwsContext) -> tuple[SecAggSilo, RoundTrainer] | None:
    """The run's silo, or None when no identity key is configured."""
    cfg = state.cfg
    if cfg.secagg_key is None:
        return None
    trainer = RoundTrainer(state)
    identity = load_key(cfg.secagg_key)
    peers = decode_identities(cfg.secagg_identities)
    return SecAggSilo(aws, cfg.deployment.bucket, cfg.client_id, identity, peers, trainer), trainer


async def secagg_loop(state: RunState, silo: tuple[SecAggSilo, RoundTrainer] | None) -> None:
    refused: set[tuple[str, int]] = set()
    while True:
        notice, receipt = await state.secagg_notices.get()
        try:
            if silo is None:
                _refuse(state, notice, refused)
            else:
                silo[1].notice = notice
                state.version = notice.round_id
                answered = await silo[0].answer(notice)
                if answered:
                    state.report.secagg_answers += 1
            await state.ports.delete([receipt])
        finally:
            state.secagg_receipts.discard(receipt)


def _refuse(state: RunState, notice: SecAggNotice, refused: set[tuple[str, int]]) -> None:
    """One `error:` line per round (not per phase), and the reason logged."""
    where = (notice.task_name, notice.round_id)
    if where in refused:
        return
    refused.add(where)
    reason = (
        f"task {notice.task_name!r} runs round {notice.round_id} with secure aggregation, "
        "but this silo has no SecAgg identity key: it is dropped from the round. Run "
        "`fedasync client keygen --out PATH`, register the printed public key in the task's "
        "secure_aggregation.identities, and start the silo with --secagg-key PATH"
    )
    state.report.secagg_refused += 1
    log.error("client.secagg_refused", reason="no_identity_key", round_id=notice.round_id)
    print(f"error: {reason}", file=sys.stderr, flush=True)

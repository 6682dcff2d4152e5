"""Where a SecAgg round's messages live, and the notice that opens each phase.

Silos only pull. For each phase the server publishes a `SecAggNotice` on the task's SNS
topic; the phase's public input (the adverts of U1, U3, the survivors' signatures) and
each silo's inbox (the sealed shares addressed to it) are S3 objects the server writes
beside the global models, where every silo of the task may read (`{task}/global/`, the
download grant silos already have: an inbox holds only ciphertexts sealed to its
recipient). A silo answers with one object under its own prefix (`{task}/local/{client}/`,
its upload grant). What the server decided (each phase's verified set) is kept under
`{task}/server/secagg/`, where no silo reads.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedasync.core.config import CLIENT_ID_PATTERN, TASK_NAME_PATTERN
from fedasync.core.messages import SHA256_PATTERN, WireMessage
from fedasync.core.privacy import PrivacyConfig

Phase = Literal["advertise_keys", "share_keys", "masked_input", "consistency", "unmask"]
PHASES: tuple[Phase, ...] = (
    "advertise_keys",
    "share_keys",
    "masked_input",
    "consistency",
    "unmask",
)


def next_phase(phase: Phase) -> Phase | None:
    at = PHASES.index(phase)
    return PHASES[at + 1] if at + 1 < len(PHASES) else None


def public_key(task_name: str, round_id: int, phase: Phase) -> str:
    """The phase's public input (written by the server, read by every silo)."""
    return f"{task_name}/global/secagg-{round_id:08d}-{phase}.json"


def inbox_key(task_name: str, round_id: int, client_id: str) -> str:
    """The sealed shares addressed to `client_id` (relayed by the server, opened by it)."""
    return f"{task_name}/global/secagg-{round_id:08d}-inbox-{client_id}.json"


def answer_key(task_name: str, round_id: int, phase: Phase, client_id: str) -> str:
    """A silo's answer to a phase, under its own prefix (a masked input is safetensors,
    `masked_wire`; every other answer JSON)."""
    ext = "safetensors" if phase == "masked_input" else "json"
    return f"{task_name}/local/{client_id}/secagg-{round_id:08d}-{phase}.{ext}"


def server_key(task_name: str, round_id: int, name: str) -> str:
    """What the server decided in a round (no silo reads here)."""
    return f"{task_name}/server/secagg/{round_id:08d}/{name}.json"


class SecAggNotice(WireMessage):
    """Published when a phase of a SecAgg round opens: answer it, once."""

    kind: Literal["secagg_phase"] = "secagg_phase"
    task_name: str = Field(pattern=TASK_NAME_PATTERN)
    round_id: int = Field(ge=0)
    phase: Phase
    # the round's global model (the silo trains on it and masks its delta)
    s3_key: str = Field(min_length=1, max_length=1024)
    sha256: str = Field(pattern=SHA256_PATTERN)
    # the round's parameters (fedasync.core.config_secagg): the context and the quantiser
    threshold: int = Field(ge=2)
    clip: float = Field(gt=0.0, allow_inf_nan=False)
    ring_bits: int = Field(ge=16, le=62)
    max_silos: int = Field(ge=2)
    degree: int | None = Field(default=None, ge=2)
    graph_seed: str = Field(default="", pattern=r"^[0-9a-f]{0,64}$")
    # the phase's expected senders: U0 (the task's silos), U1, U2, U3 or U4
    expected: tuple[str, ...] = ()
    incarnation: str | None = Field(default=None, pattern=r"^[0-9a-f]{1,32}$")
    # what the silo's training and its input carry, as in a plain round's notice: FedProx's
    # mu, and the task's privacy (local: the silo clips and noises its delta before
    # masking; central: it clips its delta to clip_norm, the server noises the sum). Left
    # out of the JSON when unset, so a notice without them is byte for byte as before.
    proximal_mu: float = Field(default=0.0, ge=0.0, allow_inf_nan=False, strict=True)
    privacy: PrivacyConfig | None = None

    def to_json(self) -> str:
        unset = {"proximal_mu"} if not self.proximal_mu else set()
        if self.privacy is None:
            unset.add("privacy")
        return self.model_dump_json(exclude=unset or None)

    @property
    def idempotency_key(self) -> str:
        task = f"{self.task_name}@{self.incarnation}" if self.incarnation else self.task_name
        return f"{task}#r{self.round_id:08d}#secagg#{self.phase}"


__all__ = ["CLIENT_ID_PATTERN", "PHASES", "Phase", "SecAggNotice"]

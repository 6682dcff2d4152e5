"""Task configuration: what one federated task is, validated once at the edge."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fedasync.core.config_encoding import UpdateEncodingField
from fedasync.core.config_limits import (
    EVENTS_PER_ROUND_CHECK,
    EVENTS_PER_SYNC_ROUND,
    SFN_HISTORY_EVENTS,
    max_sync_rounds,
)
from fedasync.core.config_parts import (
    EVAL_METRIC_PATTERN,
    OutlierFilter,
    StalenessFunction,
    TargetMetric,
    check_clip_bound,
    check_privacy_fits,
    check_target_fits,
    describe_errors,
    parse_staleness,
)
from fedasync.core.config_secagg import (
    SecureAggregation,
    check_secure_aggregation,
    parse_secure_aggregation,
    secagg_input,
)
from fedasync.core.errors import ConfigError
from fedasync.core.optimizers import ServerOptimizer
from fedasync.core.privacy import PrivacyConfig
from fedasync.core.strategies.registry import DEFAULTS, resolve

__all__ = [
    "CLIENT_ID_PATTERN",
    "EVAL_METRIC_PATTERN",
    "TASK_NAME_PATTERN",
    "StalenessFunction",
    "TargetMetric",
    "TaskConfig",
]

# What S3 keys, DynamoDB keys and Step Functions execution names all accept:
# no '/', no '#', no spaces; the execution is named after the task.
TASK_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
CLIENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$"

Mode = Literal["sync", "async"]
# what every silo's trainer minimises: classification (cross-entropy, reporting loss and
# accuracy) or regression (mean squared error, reporting loss, no accuracy)
Loss = Literal["cross_entropy", "mse"]
DEFAULT_MAX_MODEL_BYTES = 512 * 1024 * 1024
# FedBuff's server step eta: 1 lands on the buffer's weighted mean delta; beyond 10x that
# mean a step overshoots what any client proposed (and can overflow the model's dtype)
MAX_SERVER_LR = 10.0

# Fields only one mode reads; set explicitly on a task of the other mode, they are refused
# (`TaskConfig.parse`): they would be silently ignored, which is never what was meant.
SYNC_ONLY_FIELDS = ("rounds", "min_clients", "round_timeout_s")
ASYNC_ONLY_FIELDS = (
    "alpha",
    "staleness",
    "max_staleness",
    "buffer_size",
    "server_lr",
    "max_versions",
    "target_metric",
    "heartbeat_s",
    "deadline_s",
    "outlier_filter",
)

# A sanity bound on the examples one update may claim: FedAvg weighs by them, so without
# a bound one silo saying 1e18 outweighs every other. 10^8 is above any one silo's
# training set in a round that fits a Lambda; set it to what your silos really hold.
DEFAULT_MAX_NUM_EXAMPLES = 100_000_000

# The default quorum of a sync round: half its clients, rounded up. Not all of them: one
# silo that dies or sends garbage must not fail the task.
QUORUM_FRACTION = 0.5


def default_quorum(clients: int) -> int:
    return max(1, math.ceil(QUORUM_FRACTION * clients))


class TaskConfig(BaseModel):
    """One federated task, sync (FedAvg rounds) or async (FedAsync / FedBuff)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_name: str = Field(pattern=TASK_NAME_PATTERN)
    mode: Mode = "sync"
    clients: tuple[str, ...] = Field(min_length=1)
    # a registered strategy of the task's mode (fedasync.core.strategies; default: fedavg
    # for sync, fedasync for async) and its own options, validated by the strategy
    strategy: str | None = None
    strategy_options: dict[str, Any] = Field(default_factory=dict)
    # Reddi et al. 2021: a server step on the pseudo-gradient (aggregate - global), for
    # sync rounds and FedBuff's buffer (fedasync.core.optimizers; docs/strategies.md)
    server_optimizer: ServerOptimizer | None = None
    # FedProx (Li et al. 2020): each silo minimises F_k(w) + mu/2 ||w - w_global||^2;
    # sent to the silos in every notice (0: plain local training)
    proximal_mu: float = Field(default=0.0, ge=0.0, le=1e6, allow_inf_nan=False)
    # differential privacy (fedasync.core.privacy; docs/privacy.md): central (the server
    # clips and noises each release) or local (each silo noises its own update)
    privacy: PrivacyConfig | None = None
    # secure aggregation of sync rounds (fedasync.core.config_secagg; docs/secagg.md)
    secure_aggregation: Annotated[
        SecureAggregation | None, BeforeValidator(parse_secure_aggregation)
    ] = None
    update_encoding: UpdateEncodingField = None  # fp16/bf16 delta uploads (core.deltas)
    loss: Loss = Field(
        default="cross_entropy",
        description="what the silos minimise: cross_entropy (classes) or mse (regression)",
    )
    # sync
    rounds: int = Field(default=5, ge=1, le=10_000)
    min_clients: int | None = Field(
        default=None,
        ge=1,
        description="accepted updates a sync round needs to close (the quorum); default "
        "ceil(QUORUM_FRACTION * len(clients)), half the clients rounded up",
    )
    round_timeout_s: int = Field(default=300, ge=1, le=31_536_000)
    round_check_s: int = Field(
        default=15,
        ge=1,
        le=31_536_000,
        description="how often an open round checks its silos' heartbeats (a dead silo is "
        "dropped and the round closes once every live silo is decided)",
    )
    # async
    alpha: float = Field(default=0.6, gt=0.0, le=1.0)
    staleness: Annotated[StalenessFunction, BeforeValidator(parse_staleness)] = Field(
        default_factory=StalenessFunction
    )
    max_staleness: int = Field(default=16, ge=0)
    buffer_size: int = Field(default=10, ge=1)
    server_lr: float = Field(default=1.0, gt=0.0, le=MAX_SERVER_LR)
    max_versions: int = Field(default=100, ge=1)
    target_metric: TargetMetric | None = None
    # distinct silos whose latest reports the target needs; default: more than half
    target_quorum: int | None = Field(default=None, ge=1)
    heartbeat_s: int = Field(default=600, ge=1, le=31_536_000)
    deadline_s: int = Field(default=86_400, ge=1, le=31_536_000)
    # validation of every update
    max_update_norm: float | None = Field(default=None, gt=0.0)
    # robust aggregation: an update's delta against its base version is clipped to this
    # L2 norm before it is absorbed (both modes; fedasync.core.screening)
    clip_update_norm: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    # async: reject an update whose delta norm lies far above the recent accepted ones
    outlier_filter: OutlierFilter | None = None
    max_model_bytes: int = Field(default=DEFAULT_MAX_MODEL_BYTES, ge=64)
    max_num_examples: int = Field(
        default=DEFAULT_MAX_NUM_EXAMPLES,
        ge=1,
        le=2**53,
        description="an update claiming more examples is rejected ('too_many_examples')",
    )

    @field_validator("clients")
    @classmethod
    def _valid_clients(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in value if not re.match(CLIENT_ID_PATTERN, c)]
        if bad:
            raise ValueError(f"client ids {bad} must match {CLIENT_ID_PATTERN}")
        if len(set(value)) != len(value):
            raise ValueError(f"client ids must be unique, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        chosen = resolve(self.mode, self.strategy, self.strategy_options)
        object.__setattr__(self, "strategy", chosen.name)
        check_privacy_fits(self.mode, chosen.name, self.privacy, self.buffer_size, self.clients)
        if self.server_optimizer is not None and chosen.name == "fedasync":
            raise ValueError(
                "server_optimizer needs a server step on an aggregate: sync strategies and "
                "fedbuff take one; fedasync mixes each update into the head (use fedbuff)"
            )
        check_clip_bound(self.clip_update_norm, self.max_update_norm)
        central = self.privacy is not None and self.privacy.mode == "central"
        check_secure_aggregation(self, chosen.name, central_dp=central)
        if self.min_clients is None:
            object.__setattr__(self, "min_clients", default_quorum(len(self.clients)))
        elif self.min_clients > len(self.clients):
            raise ValueError(
                f"min_clients {self.min_clients} exceeds the {len(self.clients)} listed clients"
            )
        return self

    @model_validator(mode="after")
    def _within_aws_limits(self) -> Self:
        ticks = self.round_clock()[1]
        if self.mode == "sync" and self.rounds > max_sync_rounds(ticks):
            raise ValueError(
                f"rounds {self.rounds} exceeds {max_sync_rounds(ticks)}: a sync task runs as "
                f"one Step Functions execution, whose history holds {SFN_HISTORY_EVENTS} "
                f"events, and a round of {ticks} check(s) (round_timeout_s "
                f"{self.round_timeout_s} / round_check_s {self.round_check_s}) takes up to "
                f"{EVENTS_PER_SYNC_ROUND + EVENTS_PER_ROUND_CHECK * ticks}; check less often "
                "(round_check_s) or run the rest as a new task"
            )
        if self.mode == "async" and self.heartbeat_s >= self.deadline_s:
            raise ValueError(
                f"heartbeat_s ({self.heartbeat_s}) must be less than deadline_s "
                f"({self.deadline_s}): they are the OpenTask wait's HeartbeatSeconds and "
                "TimeoutSeconds, and Step Functions requires the first below the second"
            )
        return self

    def fields_of_the_other_mode(self) -> list[str]:
        """Fields set explicitly (`model_fields_set`) that this task's mode never reads."""
        unused = ASYNC_ONLY_FIELDS if self.mode == "sync" else SYNC_ONLY_FIELDS
        return [name for name in unused if name in self.model_fields_set]

    @property
    def quorum(self) -> int:
        """Accepted updates a sync round needs to close (early, or at its deadline); a
        rejected update counts against it, never as a failure of the task by itself."""
        return (
            self.min_clients if self.min_clients is not None else default_quorum(len(self.clients))
        )

    def round_clock(self) -> tuple[int, int]:
        """(seconds per check, checks per round): the sync wait is cut into checks, each
        ending with `check_round` (heartbeats read, dead silos dropped), and the deadline
        falls at the end of the last one (round_timeout_s rounded up to whole checks)."""
        ticks = -(-self.round_timeout_s // self.round_check_s)
        return -(-self.round_timeout_s // ticks), ticks

    @model_validator(mode="after")
    def _target_fits(self) -> Self:
        check_target_fits(self.target_quorum, len(self.clients), self.loss, self.target_metric)
        return self

    @property
    def target_reporters(self) -> int:
        """Distinct silos that must have reported before the target metric can stop an
        async task: `target_quorum`, by default a majority of the task's clients."""
        return self.target_quorum or len(self.clients) // 2 + 1

    @property
    def aggregation(self) -> str:
        return self.strategy or DEFAULTS[self.mode]

    @classmethod
    def parse(cls, data: dict[str, Any]) -> TaskConfig:
        """Validate a mapping; errors name every bad field and what it allows."""
        try:
            cfg = cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(describe_errors(exc, data.get("task_name"))) from exc
        # here, not in a validator: a stored config (every field dumped) is read back too
        unused = cfg.fields_of_the_other_mode()
        if unused:
            other = "async" if cfg.mode == "sync" else "sync"
            raise ConfigError(
                f"invalid config for task {cfg.task_name!r}:\n  "
                + "\n  ".join(
                    f"{name}: applies to {other} tasks only; this task is {cfg.mode} "
                    "(remove it, or set mode)"
                    for name in unused
                )
            )
        return cfg

    def execution_input(self, start_round: int = 0) -> dict[str, Any]:
        """The Step Functions execution input: the task as the state machine needs it.

        `start_round` (sync): the first round this execution opens; a resumed task's
        next round (`fedasync task resume`)."""
        return {
            "task_name": self.task_name,
            "start_round": start_round,
            "mode": self.mode,
            "rounds": self.rounds,
            "min_clients": self.quorum,
            "round_timeout_s": self.round_timeout_s,
            "round_check_s": self.round_clock()[0],
            "round_ticks": self.round_clock()[1],
            "heartbeat_s": self.heartbeat_s,
            "deadline_s": self.deadline_s,
            **secagg_input(self.secure_aggregation, len(self.clients), self.round_check_s),
        }

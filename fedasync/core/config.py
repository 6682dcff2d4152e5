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

from fedasync.core.config_parts import (
    EVAL_METRIC_PATTERN,
    StalenessFunction,
    TargetMetric,
    parse_staleness,
)
from fedasync.core.errors import ConfigError

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
Strategy = Literal["fedavg", "fedasync", "fedbuff"]
# what every silo's trainer minimises: classification (cross-entropy, reporting loss and
# accuracy) or regression (mean squared error, reporting loss, no accuracy)
Loss = Literal["cross_entropy", "mse"]
CLASSIFICATION_ONLY_METRICS = ("eval_accuracy",)
STRATEGIES_BY_MODE: dict[str, tuple[str, ...]] = {
    "sync": ("fedavg",),
    "async": ("fedasync", "fedbuff"),
}
DEFAULT_MAX_MODEL_BYTES = 512 * 1024 * 1024
# FedBuff's server step eta: 1 lands on the buffer's weighted mean delta; beyond 10x that
# mean a step overshoots what any client proposed (and can overflow the model's dtype)
MAX_SERVER_LR = 10.0

# Step Functions keeps at most 25,000 events in one execution's history, and a sync task's
# attempt is one execution: its rounds are bounded by the events a round adds. Per state
# kind (stepfunctions/fl_task.asl.json; tests/unit/test_config_limits.py walks the ASL
# and counts them again, tests/integration/test_stack_history.py checks them on moto):
#   a waitForTaskToken Task: Entered, Scheduled, Started, Submitted, Succeeded|TimedOut,
#     Exited = 6;  a dynamodb:updateItem Task: the same without Submitted = 5;
#   a Pass or Choice state: Entered, Exited = 2;  a Fail state and the execution's own
#     start or end: at most 2 and 1.
# A round closed on time: MoreRounds 2 + ResetRoundClock 2 + OpenRound 6 + IsRoundClosed 2
#   + NextRound 2 = 14. At worst it runs to its deadline through all of its `round_ticks`
#   checks: each check adds CountTick 2 + IsRoundDue 2, every one but the last a
#   CheckRound 6, and the last the CloseRound 6 instead, so 14 + 10 x ticks events.
# Around the rounds: ExecutionStarted 1 + StartTask 5 + ChooseMode 2 + FirstRound 2, and
#   at the end at most MoreRounds 2 + RecordSucceeded 5 + TaskSucceeded 2 (a failure:
#   QuorumMissed 2 + RecordFailed 5 + TaskFailed 2) + the execution's end 1 = 20.
# So rounds <= (25,000 - 20) // (14 + 10 x ticks): 1040 with one check per round, 116
# with the default 300-s round checked every 15 s.
SFN_HISTORY_EVENTS = 25_000
EVENTS_PER_SYNC_ROUND = 14
EVENTS_PER_ROUND_CHECK = 10
EVENTS_AROUND_ROUNDS = 20


def max_sync_rounds(ticks: int) -> int:
    """The most rounds of `ticks` checks each that one execution's history holds."""
    worst = EVENTS_PER_SYNC_ROUND + EVENTS_PER_ROUND_CHECK * ticks
    return (SFN_HISTORY_EVENTS - EVENTS_AROUND_ROUNDS) // worst


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
    strategy: Strategy | None = None
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
        allowed = STRATEGIES_BY_MODE[self.mode]
        if self.strategy is None:
            object.__setattr__(self, "strategy", allowed[0])
        elif self.strategy not in allowed:
            raise ValueError(
                f"strategy {self.strategy!r} does not fit mode {self.mode!r}; "
                f"allowed: {', '.join(repr(s) for s in allowed)}"
            )
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
    def _target_quorum_fits(self) -> Self:
        if self.target_quorum is not None and self.target_quorum > len(self.clients):
            raise ValueError(
                f"target_quorum {self.target_quorum} exceeds the {len(self.clients)} listed "
                "clients: the target metric could never stop the task"
            )
        return self

    @model_validator(mode="after")
    def _target_fits_the_loss(self) -> Self:
        name = self.target_metric.name if self.target_metric is not None else None
        if self.loss == "mse" and name in CLASSIFICATION_ONLY_METRICS:
            raise ValueError(
                f"target metric {name!r} needs classes; a regression task (loss 'mse') "
                "reports eval_loss and eval_mae: use e.g. {'name': 'eval_loss', "
                "'threshold': ..., 'higher_is_better': false}"
            )
        return self

    @property
    def target_reporters(self) -> int:
        """Distinct silos that must have reported before the target metric can stop an
        async task: `target_quorum`, by default a majority of the task's clients."""
        return self.target_quorum or len(self.clients) // 2 + 1

    @property
    def aggregation(self) -> str:
        return self.strategy or STRATEGIES_BY_MODE[self.mode][0]

    @classmethod
    def parse(cls, data: dict[str, Any]) -> TaskConfig:
        """Validate a mapping; errors name every bad field and what it allows."""
        try:
            cfg = cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, data.get("task_name"))) from exc
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
        }


def _describe(exc: ValidationError, task_name: object) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "task"
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{field}: {err['msg']}{shown}")
    head = f"invalid config for task {task_name!r}" if task_name else "invalid task config"
    return head + ":\n  " + "\n  ".join(lines)

"""Task configuration: what one federated task is, validated once at the edge."""

from __future__ import annotations

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

from fedasync.core.errors import ConfigError

# What S3 keys, DynamoDB keys and Step Functions execution names all accept:
# no '/', no '#', no spaces; the execution is named after the task.
TASK_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
CLIENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$"

Mode = Literal["sync", "async"]
Strategy = Literal["fedavg", "fedasync", "fedbuff"]
STRATEGIES_BY_MODE: dict[str, tuple[str, ...]] = {
    "sync": ("fedavg",),
    "async": ("fedasync", "fedbuff"),
}
DEFAULT_MAX_MODEL_BYTES = 512 * 1024 * 1024

_STALENESS_RE = re.compile(r"^\s*(constant|polynomial|hinge)\s*(?:\(([^)]*)\))?\s*$")


def _parse_staleness(value: Any) -> Any:
    """Accept `"constant"`, `"polynomial(0.5)"`, `"hinge(10, 4)"` or a mapping."""
    if not isinstance(value, str):
        return value
    match = _STALENESS_RE.match(value)
    if match is None:
        raise ValueError(
            f"staleness {value!r} is not one of 'constant', 'polynomial(a)', 'hinge(a, b)'"
        )
    kind, args = match.group(1), match.group(2)
    numbers = [float(x) for x in args.split(",")] if args and args.strip() else []
    names = {"constant": [], "polynomial": ["a"], "hinge": ["a", "b"]}[kind]
    if len(numbers) != len(names):
        raise ValueError(f"staleness {kind!r} takes {len(names)} argument(s) {names}")
    return {"kind": kind, **dict(zip(names, numbers, strict=True))}


class StalenessFunction(BaseModel):
    """s(staleness) from FedAsync (Xie et al. 2019, §5.2).

    constant: s = 1; polynomial: s = (1 + staleness)^(-a);
    hinge: s = 1 if staleness <= b else 1 / (a * (staleness - b) + 1).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["constant", "polynomial", "hinge"] = "constant"
    a: float = Field(default=0.5, ge=0.0)
    b: float = Field(default=4.0, ge=0.0)

    def weight(self, staleness: int) -> float:
        if staleness < 0:
            raise ValueError(f"staleness must be >= 0, got {staleness}")
        if self.kind == "constant":
            return 1.0
        if self.kind == "polynomial":
            return float((1.0 + staleness) ** (-self.a))
        if staleness <= self.b:
            return 1.0
        return 1.0 / (self.a * (staleness - self.b) + 1.0)

    def __str__(self) -> str:
        if self.kind == "constant":
            return "constant"
        if self.kind == "polynomial":
            return f"polynomial({self.a:g})"
        return f"hinge({self.a:g}, {self.b:g})"


class TargetMetric(BaseModel):
    """Stop an async task once a client-reported metric reaches a threshold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    threshold: float
    higher_is_better: bool = True

    def reached(self, value: float) -> bool:
        return value >= self.threshold if self.higher_is_better else value <= self.threshold


class TaskConfig(BaseModel):
    """One federated task, sync (FedAvg rounds) or async (FedAsync / FedBuff)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_name: str = Field(pattern=TASK_NAME_PATTERN)
    mode: Mode = "sync"
    clients: tuple[str, ...] = Field(min_length=1)
    strategy: Strategy | None = None
    # sync
    rounds: int = Field(default=5, ge=1, le=10_000)
    min_clients: int | None = Field(default=None, ge=1)
    round_timeout_s: int = Field(default=300, ge=1, le=31_536_000)
    # async
    alpha: float = Field(default=0.6, gt=0.0, le=1.0)
    staleness: Annotated[StalenessFunction, BeforeValidator(_parse_staleness)] = Field(
        default_factory=StalenessFunction
    )
    max_staleness: int = Field(default=16, ge=0)
    buffer_size: int = Field(default=10, ge=1)
    server_lr: float = Field(default=1.0, gt=0.0)
    max_versions: int = Field(default=100, ge=1)
    target_metric: TargetMetric | None = None
    heartbeat_s: int = Field(default=600, ge=1, le=31_536_000)
    deadline_s: int = Field(default=86_400, ge=1, le=31_536_000)
    # validation of every update
    max_update_norm: float | None = Field(default=None, gt=0.0)
    max_model_bytes: int = Field(default=DEFAULT_MAX_MODEL_BYTES, ge=64)

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
            object.__setattr__(self, "min_clients", len(self.clients))
        elif self.min_clients > len(self.clients):
            raise ValueError(
                f"min_clients {self.min_clients} exceeds the {len(self.clients)} listed clients"
            )
        return self

    @property
    def quorum(self) -> int:
        """Updates a sync round needs to close at its deadline."""
        return self.min_clients if self.min_clients is not None else len(self.clients)

    @property
    def aggregation(self) -> str:
        return self.strategy or STRATEGIES_BY_MODE[self.mode][0]

    @classmethod
    def parse(cls, data: dict[str, Any]) -> TaskConfig:
        """Validate a mapping; errors name every bad field and what it allows."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, data.get("task_name"))) from exc

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

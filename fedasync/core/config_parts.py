"""Parts of a task's configuration with their own rules: the staleness function of
FedAsync, the target metric and the outlier filter of an async task (`fedasync.core.config`
composes them)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fedasync.core.privacy import PrivacyConfig
from fedasync.core.robust import OUTLIER_K, OUTLIER_MIN_HISTORY, OUTLIER_REL_FLOOR

_STALENESS_RE = re.compile(r"^\s*(constant|polynomial|hinge)\s*(?:\(([^)]*)\))?\s*$")


def parse_staleness(value: Any) -> Any:
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


EVAL_METRIC_PATTERN = r"^eval_[A-Za-z0-9_]{1,59}$"


class TargetMetric(BaseModel):
    """Stop an async task once the silos' evaluation of the global model reaches a
    threshold (see `fedasync.core.target`: a weighted median over a quorum of silos).

    Only `eval_*` metrics qualify: each silo's score of the global model it received on
    the part of its data it holds out (`--eval-fraction`). `train_*` metrics measure a
    local model's fit to its own training data and would stop a task too early."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    threshold: float = Field(allow_inf_nan=False)
    higher_is_better: bool = True

    @field_validator("name")
    @classmethod
    def _an_eval_metric(cls, value: str) -> str:
        if not re.match(EVAL_METRIC_PATTERN, value):
            hint = "eval_" + value.removeprefix("train_")
            raise ValueError(
                f"target metric {value!r} is not an evaluation metric: clients report "
                f"eval_* scores of the global model on held-out data; use e.g. {hint!r}"
            )
        return value

    def reached(self, value: float) -> bool:
        return value >= self.threshold if self.higher_is_better else value <= self.threshold


def describe_errors(exc: ValidationError, task_name: object) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "task"
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{field}: {err['msg']}{shown}")
    head = f"invalid config for task {task_name!r}" if task_name else "invalid task config"
    return head + ":\n  " + "\n  ".join(lines)


def check_privacy_fits(
    mode: str,
    strategy: str,
    privacy: PrivacyConfig | None,
    buffer_size: int,
    clients: tuple[str, ...],
) -> None:
    """Central DP is defined here for a sum of clipped deltas (docs/privacy.md): FedAvg
    rounds, FedAsync updates, FedBuff flushes. A robust rule looks at individual updates
    (their median, their distances), where one silo's sensitivity is not the clip norm;
    local DP (each silo noises its own update) fits every strategy."""
    if privacy is None or privacy.mode != "central":
        return
    if mode == "sync" and strategy != "fedavg":
        raise ValueError(
            f"privacy mode 'central' releases a noised sum of clipped deltas (DP-FedAvg); "
            f"strategy {strategy!r} aggregates individual updates, whose sensitivity to one "
            "silo the noise would not cover: use strategy 'fedavg', or privacy mode 'local'"
        )
    if mode == "async" and strategy not in ("fedasync", "fedbuff"):
        raise ValueError(
            f"privacy mode 'central' releases a noised update (FedAsync) or a noised buffer "
            f"(FedBuff) in an async task; strategy {strategy!r} has no sensitivity bound "
            "here: use 'fedasync' or 'fedbuff', or privacy mode 'local'"
        )
    if mode == "async" and strategy == "fedbuff" and buffer_size > len(clients):
        raise ValueError(
            f"privacy mode 'central' with fedbuff takes each silo at most once per buffer: "
            f"buffer_size {buffer_size} can never fill with {len(clients)} client(s); choose "
            f"buffer_size <= {len(clients)}"
        )


# The most accepted delta norms an outlier filter remembers: the window lives on the TASK
# item (400 KB at most, shared with the rest of the task's state), ~25 bytes a norm.
MAX_OUTLIER_WINDOW = 1000


class OutlierFilter(BaseModel):
    """Async tasks: reject an update whose delta norm (against its base version) lies far
    above the recent accepted ones (`fedasync.core.robust.outlier`): norm > median + k x
    max(MAD, rel_floor x median) of the delta norms of the last `window` accepted updates.
    Nothing is rejected before `min_history` updates were accepted."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    k: float = Field(default=OUTLIER_K, gt=0.0, le=1e6, allow_inf_nan=False)
    min_history: int = Field(default=OUTLIER_MIN_HISTORY, ge=1, le=MAX_OUTLIER_WINDOW)
    window: int = Field(default=20, ge=1, le=MAX_OUTLIER_WINDOW)
    rel_floor: float = Field(default=OUTLIER_REL_FLOOR, ge=0.0, le=1e6, allow_inf_nan=False)

    @model_validator(mode="after")
    def _history_fits_the_window(self) -> OutlierFilter:
        if self.min_history > self.window:
            raise ValueError(
                f"min_history {self.min_history} exceeds window {self.window}: the filter "
                "keeps the last `window` accepted norms, so it could never judge an update"
            )
        return self


def check_clip_bound(clip: float | None, max_norm: float | None) -> None:
    """`clip_update_norm` below `max_update_norm` when both are set."""
    if clip is not None and max_norm is not None and clip >= max_norm:
        raise ValueError(
            f"clip_update_norm {clip} must be below max_update_norm {max_norm}: an update "
            "longer than max_update_norm is rejected before it is clipped, so this clipping "
            "would never act"
        )


CLASSIFICATION_ONLY_METRICS = ("eval_accuracy",)


def check_target_fits(
    target_quorum: int | None, clients: int, loss: str, target: TargetMetric | None
) -> None:
    """The target quorum within the clients, and a metric the task's loss reports."""
    if target_quorum is not None and target_quorum > clients:
        raise ValueError(
            f"target_quorum {target_quorum} exceeds the {clients} listed "
            "clients: the target metric could never stop the task"
        )
    name = target.name if target is not None else None
    if loss == "mse" and name in CLASSIFICATION_ONLY_METRICS:
        raise ValueError(
            f"target metric {name!r} needs classes; a regression task (loss 'mse') "
            "reports eval_loss and eval_mae: use e.g. {'name': 'eval_loss', "
            "'threshold': ..., 'higher_is_better': false}"
        )

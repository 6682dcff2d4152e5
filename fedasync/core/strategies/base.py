"""What a strategy is: the seam between the server and the aggregation maths.

The anchor is Flower's `Strategy` ABC with the maths as free functions: the server
decides *which* updates go in (validation, staleness, quorum, the trust boundary) and a
strategy decides *what they make*. A strategy is pure (arrays and records in, arrays and
records out: no I/O, no clock, no unseeded randomness), so replay runs the very same code.

- A **sync** strategy aggregates the accepted updates of one round. The server opens a
  `Fold`, adds each update (a mapping of read-only arrays) with its example count, and
  takes `result()`. FedAvg folds as it goes (O(model) memory); a rule over all updates at
  once (`HoldingStrategy`: median, trimmed mean, Krum) `combine`s what it collected,
  holding each update through the server's `keep` (spilled to disk and mapped back).
- An **async** strategy absorbs one update into the server's state (`AsyncState`, the
  head model and, for buffered rules, a float64 buffer the server stores between calls).

Options: each strategy declares a pydantic `Options` model; the task config's
`strategy_options` is validated against it at `task start` (unknown keys refused).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from fedasync.core.codec import Array, ModelSpec, Weights, check_compatible
from fedasync.core.errors import SchemaError

if TYPE_CHECKING:
    from fedasync.core.asyncagg import Absorbed, AsyncState
    from fedasync.core.config import TaskConfig
    from fedasync.core.noise import SecureGaussian
    from fedasync.core.optimizers import OptimizerState


class NoOptions(BaseModel):
    """A strategy without options of its own."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Fold(Protocol):
    """One round's aggregation in progress."""

    def add(self, weights: Mapping[str, Array], num_examples: int, who: str = "update") -> None:
        """Take one accepted update (the caller may drop its reference afterwards unless
        the strategy `holds_updates`)."""

    def result(self) -> Weights:
        """The round's aggregate, in the model's dtypes; the fold is consumed."""


class Strategy(ABC):
    """Common to both kinds: a registered name, the mode it serves, its options."""

    name: ClassVar[str]
    mode: ClassVar[Literal["sync", "async"]]
    Options: ClassVar[type[BaseModel]] = NoOptions
    summary: ClassVar[str] = ""

    def __init__(self, options: BaseModel | None = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> Strategy:
        return cls(cls.Options.model_validate(dict(raw)))


Keep = Callable[[Mapping[str, Array]], Mapping[str, Array]]


def keep_in_memory(weights: Mapping[str, Array]) -> Mapping[str, Array]:
    return weights


class SyncStrategy(Strategy):
    """Aggregates a round's accepted updates into the round's candidate model."""

    mode: ClassVar[Literal["sync", "async"]] = "sync"

    @abstractmethod
    def fold(self, spec: ModelSpec, *, who: str, keep: Keep = keep_in_memory) -> Fold:
        """A fresh fold for one round of a model of `spec`. A strategy that must see every
        update at once passes each through `keep` and holds what it returns: the server
        gives a `keep` that spills the update to local disk and maps it back (`np.memmap`),
        so memory holds chunks, not N models."""

    def max_step(self, members: int, bound: float) -> float:
        """How far the round's result may lie from the round's model when each of its
        `members` updates lies within `bound` of it (`max_update_norm`): a weighted mean
        of such updates stays within `bound`. A rule that is not a mean says its own."""
        return bound


class HoldingStrategy(SyncStrategy):
    """A sync rule over all of a round's updates at once (median, trimmed mean, Krum):
    `combine` them; the fold only collects (through `keep`)."""

    @abstractmethod
    def combine(
        self, updates: Sequence[Mapping[str, Array]], num_examples: Sequence[int], *, who: str
    ) -> tuple[Weights, dict[str, Any]]:
        """The aggregate, and what the round's result records about it (JSON values, e.g.
        the updates a selection rule chose, by their position in the round's members)."""

    def fold(self, spec: ModelSpec, *, who: str, keep: Keep = keep_in_memory) -> Fold:
        return Collected(self, spec, who, keep)


class Collected:
    """The fold of a `HoldingStrategy`: every update, checked against the spec, kept."""

    def __init__(self, strategy: HoldingStrategy, spec: ModelSpec, who: str, keep: Keep) -> None:
        self._strategy, self._spec, self._who, self._keep = strategy, spec, who, keep
        self._updates: list[Mapping[str, Array]] = []
        self._examples: list[int] = []
        self.details: dict[str, Any] = {}

    def add(self, weights: Mapping[str, Array], num_examples: int, who: str = "update") -> None:
        check_compatible(weights, self._spec, who)
        self._updates.append(self._keep(weights))
        self._examples.append(num_examples)

    def result(self) -> Weights:
        if not self._updates:
            raise SchemaError(f"{self._who}: no updates to aggregate (empty round)")
        out, self.details = self._strategy.combine(self._updates, self._examples, who=self._who)
        self._updates.clear()
        return out


def details_of(fold: Fold) -> dict[str, Any]:
    """What a fold recorded about its aggregation (empty for a streaming one)."""
    found = getattr(fold, "details", None)
    return dict(found) if isinstance(found, dict) else {}


class AsyncStrategy(Strategy):
    """Absorbs one validated update into the server's async state."""

    mode: ClassVar[Literal["sync", "async"]] = "async"
    # the update's base version model is read for it (FedBuff's delta x_client - x_base)
    needs_base: ClassVar[bool] = False

    @abstractmethod
    def absorb(
        self,
        state: AsyncState,
        cfg: TaskConfig,
        *,
        global_w: Mapping[str, Array],
        client_w: Mapping[str, Array],
        base_w: Mapping[str, Array] | None,
        buffer_sum: Mapping[str, Array] | None,
        staleness: int,
        who: str,
        server_state: OptimizerState | None = None,
        noise: SecureGaussian | None = None,
    ) -> Absorbed:
        """The state after the update (and the new global model when it advances)."""

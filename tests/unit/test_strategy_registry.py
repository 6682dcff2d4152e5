"""The strategy seam: a task config names a registered strategy; a new one is a class and
a registration, and the config, the server and replay reach it by name."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict

from fedasync.core.codec import spec_of
from fedasync.core.config import TaskConfig
from fedasync.core.errors import ConfigError, IncompatibleUpdateError, SchemaError
from fedasync.core.strategies import HoldingStrategy, names_for, register, registered, sync_strategy
from fedasync.core.strategies.base import details_of


class _Options(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    pick: int = 0


class PickOne(HoldingStrategy):
    """A test rule: the round's aggregate is its `pick`-th update."""

    name: ClassVar[str] = "test_pick_one"
    Options: ClassVar[type[BaseModel]] = _Options

    def combine(self, updates, num_examples, *, who) -> tuple[dict, dict[str, Any]]:
        pick = self.options.pick  # type: ignore[attr-defined]
        return {k: np.array(v) for k, v in updates[pick].items()}, {"picked": pick}


register(PickOne)


def _cfg(**over: Any) -> TaskConfig:
    return TaskConfig.parse({"task_name": "t", "clients": ["a", "b", "c"], **over})


def test_the_builtin_strategies_are_registered_by_mode_default_first():
    assert names_for("sync")[0] == "fedavg"
    assert {"median", "trimmed_mean", "krum"} <= set(names_for("sync"))
    assert names_for("async") == ("fedasync", "fedbuff")


def test_a_registered_strategy_is_chosen_by_name_with_its_options():
    # GIVEN a task naming the test strategy with its option
    cfg = _cfg(strategy="test_pick_one", strategy_options={"pick": 1})
    # WHEN the server folds a round's updates through it
    updates = [{"w": np.full(2, float(i), np.float32)} for i in range(3)]
    fold = sync_strategy(cfg).fold(spec_of(updates[0]), who="round 0")
    for i, u in enumerate(updates):
        fold.add(u, 10, who=f"u{i}")
    # THEN the aggregate is the second update, and what it recorded is kept
    assert fold.result()["w"].tolist() == [1.0, 1.0]
    assert details_of(fold) == {"picked": 1}


def test_an_unknown_strategy_is_refused_naming_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"'fedmagic' does not fit mode 'sync'.*'fedavg'"):
        _cfg(strategy="fedmagic")


def test_a_strategy_of_the_other_mode_is_refused_saying_which_mode_it_is():
    with pytest.raises(ConfigError, match="it is an async strategy"):
        _cfg(strategy="fedbuff")


def test_unknown_and_out_of_range_options_are_refused_with_the_strategys_options():
    with pytest.raises(ConfigError, match=r"lambda: Extra inputs.*its options: beta"):
        _cfg(strategy="trimmed_mean", strategy_options={"lambda": 1})
    with pytest.raises(ConfigError, match="beta"):
        _cfg(strategy="trimmed_mean", strategy_options={"beta": 0.5})


def test_a_second_class_under_a_taken_name_is_refused():
    class Impostor(PickOne):
        pass

    with pytest.raises(ConfigError, match="taken"):
        register(Impostor)
    assert registered()["test_pick_one"] is PickOne


def test_a_holding_fold_refuses_a_mis_shaped_update_and_an_empty_round():
    cfg = _cfg(strategy="median")
    spec = spec_of({"w": np.zeros(2, np.float32)})
    fold = sync_strategy(cfg).fold(spec, who="round 0")
    with pytest.raises(IncompatibleUpdateError, match="shape"):
        fold.add({"w": np.zeros(3, np.float32)}, 1, who="u0")
    with pytest.raises(SchemaError, match="no updates"):
        fold.result()


def test_median_through_the_seam_is_the_coordinate_median():
    # GIVEN three updates [0, 9], [1, 5], [7, 6]: the coordinate medians are 1 and 6
    cfg = _cfg(strategy="median")
    ups = [np.array(v, np.float32) for v in ([0, 9], [1, 5], [7, 6])]
    fold = sync_strategy(cfg).fold(spec_of({"w": ups[0]}), who="round 0")
    for u in ups:
        fold.add({"w": u}, 1)
    out = fold.result()["w"]
    assert out.tolist() == [1.0, 6.0] and out.dtype == np.float32


def test_a_coordinatewise_rule_is_bounded_by_sqrt_n_times_the_update_bound():
    # GIVEN three deltas of norm B = 1: (x, x, 0), (x, 0, x), (0, x, x) with x = 1/sqrt(2)
    from fedasync.core.globalcheck import check_new_global

    x = 1 / np.sqrt(2)
    ups = [np.array(v, np.float64) for v in ([x, x, 0], [x, 0, x], [0, x, x])]
    cfg = _cfg(strategy="median")
    fold = sync_strategy(cfg).fold(spec_of({"w": ups[0]}), who="round 0")
    for u in ups:
        fold.add({"w": u}, 1)
    result = fold.result()
    # THEN their median (x, x, x) is sqrt(3/2) = 1.22 long: beyond B, within sqrt(3) B
    assert np.linalg.norm(result["w"]) > 1.0
    head = {"w": np.zeros(3)}
    bound = sync_strategy(cfg).max_step(3, 1.0)
    assert bound == pytest.approx(np.sqrt(3))
    check_new_global(result, head, max_step=bound, who="median round")  # not refused
    # AND a mean (FedAvg, Krum) keeps the bound B itself
    assert sync_strategy(_cfg()).max_step(3, 1.0) == 1.0

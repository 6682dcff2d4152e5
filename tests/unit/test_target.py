"""The async stop on a target metric (pure): a robust median over a quorum of silos."""

from __future__ import annotations

import pytest

from fedasync.core.asyncagg import AsyncState, stop_reason
from fedasync.core.config import TaskConfig
from fedasync.core.errors import ConfigError
from fedasync.core.target import Report, target_value, weighted_median, with_report


def cfg(clients=("a", "b", "c"), **over) -> TaskConfig:
    return TaskConfig.parse(
        {
            "task_name": "t",
            "mode": "async",
            "clients": list(clients),
            "target_metric": {"name": "eval_accuracy", "threshold": 0.9},
            **over,
        }
    )


def test_one_huge_value_does_not_move_the_median():
    # GIVEN three silos of equal size, one reporting an absurd accuracy
    reports = [Report(0.5, 100), Report(0.6, 100), Report(1e100, 100)]
    # WHEN the median is taken THEN it is the middle honest value
    assert weighted_median(reports) == 0.6


def test_two_reporters_give_the_worse_value_on_a_tie_of_weight():
    # GIVEN two silos of equal weight THEN neither alone holds more than half: the worse one
    assert weighted_median([Report(0.5, 7), Report(1e100, 7)]) == 0.5
    assert weighted_median([Report(0.5, 7), Report(0.1, 7)], higher_is_better=False) == 0.5


def test_weights_are_examples_clipped_at_the_median_count():
    # GIVEN examples 10, 30, 60 (median 30: weights 10, 30, 30, total 70, half 35)
    reports = [Report(0.95, 10), Report(0.7, 30), Report(0.8, 60)]
    # best first: 0.95 holds 10, 0.8 holds 10 + 30 = 40 > 35 -> 0.8
    assert weighted_median(reports) == 0.8
    # GIVEN a silo claiming 10**9 examples: clipped at the median 30, it holds 30 of 90
    liar = [Report(1.0, 10**9), Report(0.5, 30), Report(0.5, 30)]
    assert weighted_median(liar) == 0.5


def test_lower_is_better_takes_the_median_from_the_low_side():
    # losses 0.1 (w 10), 0.3 (w 10), 0.2 (w 10): best first 0.1, 0.2 (20 > 15) -> 0.2
    reports = [Report(0.1, 10), Report(0.3, 10), Report(0.2, 10)]
    assert weighted_median(reports, higher_is_better=False) == 0.2


def test_reports_without_examples_do_not_count():
    assert weighted_median([Report(1.0, 0)]) is None
    assert weighted_median([Report(1.0, 0), Report(0.4, 3)]) == 0.4


def test_the_target_needs_a_quorum_of_distinct_reporters():
    # GIVEN 3 clients: the default quorum is a majority, 2
    c = cfg()
    assert c.target_reporters == 2
    one = {"a": Report(0.99, 10)}
    # WHEN only one has reported THEN there is no value to stop on
    assert target_value(c, one) is None
    assert stop_reason(AsyncState(version=1), c, metric=target_value(c, one)) is None
    # WHEN two have reported, both at or above 0.9 THEN the task stops
    two = {**one, "b": Report(0.91, 10)}
    assert target_value(c, two) == 0.91
    assert stop_reason(AsyncState(version=1), c, metric=target_value(c, two)) == "target_metric"
    # AND a report from a client outside the task is never counted
    assert target_value(c, {**one, "mallory": Report(0.99, 10)}) is None


def test_an_explicit_quorum_is_honoured_and_bounded_by_the_clients():
    c = cfg(target_quorum=3)
    two = {"a": Report(0.99, 10), "b": Report(0.99, 10)}
    assert target_value(c, two) is None
    assert target_value(c, {**two, "c": Report(0.1, 10)}) == 0.99
    with pytest.raises(ConfigError, match="target_quorum 4 exceeds the 3 listed clients"):
        cfg(target_quorum=4)


def test_only_a_report_of_the_target_metric_replaces_a_silos_latest():
    c = cfg()
    latest = {"a": Report(0.5, 10)}
    assert with_report(c, latest, "a", {"train_accuracy": 1.0}, 10) is None
    assert with_report(c, latest, "a", {"eval_accuracy": 0.7}, 12) == {"a": Report(0.7, 12)}


def test_stored_reports_are_read_back_and_legacy_numbers_weigh_one():
    assert Report.from_item({"value": 0.5, "num_examples": 30}) == Report(0.5, 30)
    assert Report.from_item(0.75) == Report(0.75, 1)
    assert Report.from_item({"value": "high", "num_examples": 30}) is None


@pytest.mark.parametrize("name", ["accuracy", "train_accuracy", "loss", "eval_"])
def test_a_target_must_be_an_eval_metric(name):
    with pytest.raises(ConfigError, match="is not an evaluation metric"):
        cfg(target_metric={"name": name, "threshold": 0.9})

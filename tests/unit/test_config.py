"""TaskConfig: defaults that make sense, and errors that name the field and what it allows."""

import pytest

from fedasync.core.config import StalenessFunction, TaskConfig
from fedasync.core.errors import ConfigError


def test_sync_defaults_to_fedavg_and_a_quorum_of_half_the_clients_rounded_up():
    cfg = TaskConfig.parse({"task_name": "digits", "clients": ["a", "b", "c"]})
    assert cfg.mode == "sync"
    assert cfg.aggregation == "fedavg"
    assert cfg.quorum == cfg.min_clients == 2
    # 1 -> 1, 2 -> 1, 4 -> 2, 5 -> 3, 10 -> 5: never all of them once there are two
    for n, quorum in ((1, 1), (2, 1), (4, 2), (5, 3), (10, 5)):
        clients = [f"c{i}" for i in range(n)]
        assert TaskConfig.parse({"task_name": "t", "clients": clients}).quorum == quorum


@pytest.mark.parametrize(
    ("timeout_s", "check_s", "clock"),
    [(300, 15, (15, 20)), (3, 15, (3, 1)), (100, 15, (15, 7)), (60, 1, (1, 60)), (7, 7, (7, 1))],
)
def test_a_round_wait_is_cut_into_whole_checks_covering_its_timeout(timeout_s, check_s, clock):
    # GIVEN round_timeout_s and round_check_s WHEN the wait is cut into checks
    cfg = TaskConfig.parse(
        {"task_name": "t", "clients": ["a"], "round_timeout_s": timeout_s, "round_check_s": check_s}
    )
    # THEN (seconds per check, checks) as computed by hand: ceil(T / C) checks of
    # ceil(T / checks) s, never shorter than the timeout
    assert cfg.round_clock() == clock
    assert clock[0] * clock[1] >= timeout_s


def test_async_defaults_to_fedasync():
    cfg = TaskConfig.parse({"task_name": "digits", "mode": "async", "clients": ["a"]})
    assert cfg.aggregation == "fedasync"


@pytest.mark.parametrize(
    ("text", "kind", "a", "b"),
    [
        ("constant", "constant", None, None),
        ("polynomial(0.5)", "polynomial", 0.5, None),
        ("hinge(10, 4)", "hinge", 10.0, 4.0),
    ],
)
def test_staleness_is_parsed_from_its_short_form(text, kind, a, b):
    cfg = TaskConfig.parse({"task_name": "t", "mode": "async", "clients": ["a"], "staleness": text})
    assert cfg.staleness.kind == kind
    if a is not None:
        assert cfg.staleness.a == a
    if b is not None:
        assert cfg.staleness.b == b


def test_staleness_weights_follow_the_fedasync_paper():
    poly = StalenessFunction(kind="polynomial", a=0.5)
    assert poly.weight(0) == 1.0
    assert poly.weight(3) == pytest.approx(4**-0.5)  # (1+3)^-0.5 = 0.5
    hinge = StalenessFunction(kind="hinge", a=10, b=4)
    assert hinge.weight(4) == 1.0  # exactly b: still 1
    assert hinge.weight(5) == pytest.approx(1 / (10 * 1 + 1))
    assert StalenessFunction().weight(100) == 1.0


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ({"mode": "semi"}, ["mode", "'sync' or 'async'"]),
        ({"task_name": "bad/name"}, ["task_name", "pattern"]),
        ({"strategy": "fedbuff"}, ["fedbuff", "'fedavg'"]),
        ({"min_clients": 5}, ["min_clients", "5"]),
        ({"clients": ["a", "a"]}, ["clients", "unique"]),
        ({"staleness": "cubic(2)"}, ["staleness", "hinge(a, b)"]),
        ({"alpha": 0}, ["alpha", "greater than 0"]),
        ({"rounds": 0}, ["rounds"]),
    ],
)
def test_invalid_configs_name_the_field_and_allowed_values(override, names):
    data = {"task_name": "digits", "clients": ["a", "b"], **override}
    with pytest.raises(ConfigError) as info:
        TaskConfig.parse(data)
    for expected in names:
        assert expected in str(info.value)


def test_execution_input_carries_what_the_state_machine_reads():
    cfg = TaskConfig.parse({"task_name": "t", "clients": ["a", "b"], "min_clients": 1, "rounds": 3})
    assert cfg.execution_input() == {
        "task_name": "t",
        "start_round": 0,
        "mode": "sync",
        "rounds": 3,
        "min_clients": 1,
        "round_timeout_s": 300,
        "round_check_s": 15,
        "round_ticks": 20,
        "heartbeat_s": 600,
        "deadline_s": 86_400,
    }


def test_a_resumed_sync_task_starts_at_the_round_it_names():
    cfg = TaskConfig.parse({"task_name": "t", "clients": ["a"], "rounds": 5})
    assert cfg.execution_input(start_round=3)["start_round"] == 3

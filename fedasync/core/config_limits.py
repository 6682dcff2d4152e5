"""How many sync rounds one Step Functions execution can hold (its history quota)."""

from __future__ import annotations

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

"""The client's inbox: duplicates collapse, older notices are superseded, newest wins."""

from __future__ import annotations

import asyncio

import pytest

from client.inbox import Inbox, Offer
from fedasync.core.messages import GlobalModelNotice


def _notice(
    version: int, *, final: bool = False, mode: str = "async", seq: int | None = None
) -> GlobalModelNotice:
    return GlobalModelNotice(
        task_name="digits",
        mode=mode,
        version=version,
        seq=seq,
        s3_key=f"digits/global/{version:08d}.safetensors",
        sha256="ab" * 32,
        size_bytes=10,
        final=final,
    )


async def test_trainer_takes_the_newest_and_the_older_waiting_ones_are_superseded():
    # GIVEN notices v1, v3, v2 arrive while the trainer is busy
    inbox = Inbox()
    for version, receipt in ((1, "r1"), (3, "r3"), (2, "r2")):
        assert inbox.offer(_notice(version), receipt) is Offer.NEW
    # WHEN the trainer takes one
    held, superseded = await inbox.take_newest()
    # THEN it gets v3 and v1, v2 are handed back for deletion
    assert held.version == 3
    assert sorted(h.version for h in superseded) == [1, 2]
    # AND a late v2 is done at once, it will never be trained on
    assert inbox.offer(_notice(2), "r2-late") is Offer.DONE


async def test_a_duplicated_notice_joins_the_one_in_progress():
    inbox = Inbox()
    inbox.offer(_notice(4), "first")
    held, _ = await inbox.take_newest()
    # WHEN the same notice is delivered again while it is being worked on
    assert inbox.offer(_notice(4), "second") is Offer.JOINED
    # THEN both messages stay invisible while working, and both are deleted at the end
    assert sorted(inbox.receipts()) == ["first", "second"]
    assert sorted(inbox.finish(held)) == ["first", "second"]
    assert inbox.receipts() == []
    # AND once finished, another copy is simply deleted
    assert inbox.offer(_notice(4), "third") is Offer.DONE


async def test_a_duplicate_of_a_waiting_notice_joins_it():
    inbox = Inbox()
    inbox.offer(_notice(1), "a")
    assert inbox.offer(_notice(1), "b") is Offer.JOINED
    held, superseded = await inbox.take_newest()
    assert held.receipts == ["a", "b"]
    assert superseded == []


async def test_the_final_notice_outranks_any_version():
    inbox = Inbox()
    inbox.offer(_notice(9), "v9")
    inbox.offer(_notice(7, final=True), "final")
    held, superseded = await inbox.take_newest()
    assert held.notice.final
    assert [h.version for h in superseded] == [9]


async def test_take_waits_until_a_notice_arrives():
    inbox = Inbox()
    taker = asyncio.create_task(inbox.take_newest())
    await asyncio.sleep(0.01)
    assert not taker.done()
    inbox.offer(_notice(0), "r0")
    held, _ = await asyncio.wait_for(taker, 1.0)
    assert held.version == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_same_version_in_sync_and_async_is_one_entry(mode):
    inbox = Inbox()
    inbox.offer(_notice(2, mode=mode), "x")
    assert inbox.offer(_notice(2, mode=mode), "y") is Offer.JOINED


async def test_a_new_go_ahead_on_the_same_version_is_new_work_and_the_newest_wins():
    # GIVEN the trainer took version 5 at the server's 10th update (FedBuff: the version
    # only moves every K updates)
    inbox = Inbox()
    inbox.offer(_notice(5, seq=10), "s10")
    held, _ = await inbox.take_newest()
    inbox.finish(held)
    # WHEN later go-aheads on the same version arrive, one of them twice
    assert inbox.offer(_notice(5, seq=10), "s10-again") is Offer.DONE
    assert inbox.offer(_notice(5, seq=11), "s11") is Offer.NEW
    assert inbox.offer(_notice(5, seq=12), "s12") is Offer.NEW
    assert inbox.offer(_notice(5, seq=12), "s12-dup") is Offer.JOINED
    # THEN the trainer goes again on the newest, and the older go-ahead is superseded
    held, superseded = await inbox.take_newest()
    assert (held.version, held.notice.seq, held.receipts) == (5, 12, ["s12", "s12-dup"])
    assert [h.notice.seq for h in superseded] == [11]
    # AND once a new version is taken, any go-ahead on the old one is done at once
    assert inbox.offer(_notice(6, seq=13), "v6") is Offer.NEW
    held, _ = await inbox.take_newest()
    assert (held.version, held.notice.seq) == (6, 13)
    assert inbox.offer(_notice(5, seq=14), "late") is Offer.DONE


async def test_a_released_notice_is_new_again_when_sqs_delivers_it_again():
    # GIVEN the trainer took v2 and gave it back unfinished (its model failed its checksum)
    inbox = Inbox()
    inbox.offer(_notice(2), "r2")
    held, _ = await inbox.take_newest()
    assert inbox.release(held) == ["r2"]
    # THEN its message is no longer kept invisible (nor deleted)
    assert inbox.receipts() == []
    # WHEN SQS delivers it again THEN it waits for the trainer once more
    assert inbox.offer(_notice(2), "r2-again") is Offer.NEW
    again, _ = await inbox.take_newest()
    assert again.receipts == ["r2-again"]


async def test_a_released_notice_overtaken_by_a_newer_one_is_done_when_it_comes_back():
    # GIVEN v2 was given back, then v3 arrived and was taken
    inbox = Inbox()
    inbox.offer(_notice(2), "r2")
    inbox.release((await inbox.take_newest())[0])
    inbox.offer(_notice(3), "r3")
    assert (await inbox.take_newest())[0].version == 3
    # WHEN v2 comes back THEN it is done: a newer global exists
    assert inbox.offer(_notice(2), "r2-again") is Offer.DONE


async def test_a_task_created_again_under_its_name_starts_over():
    # GIVEN a silo that has taken v5 of task 'digits' (incarnation aa)
    inbox = Inbox()
    old = _notice(5).model_copy(update={"incarnation": "aa"})
    assert inbox.offer(old, "r5") is Offer.NEW
    await inbox.take_newest()
    assert inbox.offer(_notice(3).model_copy(update={"incarnation": "aa"}), "r3") is Offer.DONE
    # WHEN the task is created again (a new stack: incarnation bb) and announces v0
    fresh = _notice(0).model_copy(update={"incarnation": "bb"})
    # THEN v0 is new work, not "already handled" behind v5 of the old task
    assert inbox.offer(fresh, "r0") is Offer.NEW
    held, superseded = await inbox.take_newest()
    assert (held.version, held.notice.incarnation, superseded) == (0, "bb", [])
    # AND its key names the incarnation, so the two never collapse into one
    assert fresh.idempotency_key == "digits@bb#v00000000"

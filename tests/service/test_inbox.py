"""The inbox: requests that can wait are held (memory, then disk) instead of answered Busy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lfv_edge.service.config import OverflowPolicy
from lfv_edge.service.inbox import Inbox, SpillFolder
from lfv_edge.service.ports import IncomingMessage, ReplyRoute

ROUTE = ReplyRoute("results", "memory")


def _message(index: int, *, size: int = 1000, can_wait: bool = True) -> IncomingMessage:
    payload = f"{index:08d}".encode() + bytes(size - 8)
    return IncomingMessage(payload, ROUTE, can_wait=can_wait, redelivered_if_unanswered=can_wait)


def test_requests_that_cannot_wait_keep_the_count_bound() -> None:
    inbox = Inbox(2, waiting_max_bytes=1 << 20)
    assert inbox.offer(_message(0, can_wait=False), OverflowPolicy.REJECT) is None
    assert inbox.offer(_message(1, can_wait=False), OverflowPolicy.REJECT) is None
    newcomer = _message(2, can_wait=False)
    assert inbox.offer(newcomer, OverflowPolicy.REJECT) is newcomer, "reject: the newcomer"
    refused = inbox.offer(_message(3, can_wait=False), OverflowPolicy.DROP_OLDEST)
    assert refused is not None
    assert refused.payload.startswith(b"00000000"), "drop_oldest: the oldest"
    assert len(inbox) == 2


def test_waiting_requests_fill_memory_then_disk_then_are_refused(tmp_path: Path) -> None:
    # given 2 places, 5 KB of memory for waiting payloads and 4 KB of disk
    spill = SpillFolder(tmp_path / "waiting", 4000)
    inbox = Inbox(2, waiting_max_bytes=5000, spill=spill)
    # when 15 requests of 1 KB that can wait arrive while nothing is taken
    refused = [m for i in range(15) if (m := inbox.offer(_message(i), OverflowPolicy.REJECT))]
    # then 2 + 5 in memory, 4 on disk, and only the rest is refused
    assert len(inbox) == 11
    assert inbox.memory_bytes == 5000
    assert inbox.spilled_bytes == 4000
    assert len(list(spill.folder.iterdir())) == 4, "one file per spilled request"
    assert [m.payload[:8] for m in refused] == [f"{i:08d}".encode() for i in range(11, 15)]
    # and they come back oldest first, payloads intact, files gone
    taken = [inbox.get() for _ in range(11)]
    assert [m.payload[:8] for m in taken if m] == [f"{i:08d}".encode() for i in range(11)]
    assert all(m is not None and len(m.payload) == 1000 for m in taken)
    assert list(spill.folder.iterdir()) == [], "spilled files are removed when taken"
    assert (inbox.memory_bytes, inbox.spilled_bytes) == (0, 0)


def test_close_lets_workers_take_the_rest_then_stop(tmp_path: Path) -> None:
    inbox = Inbox(1, waiting_max_bytes=0, spill=SpillFolder(tmp_path, 1 << 20))
    for i in range(3):
        assert inbox.offer(_message(i), OverflowPolicy.REJECT) is None
    inbox.close()
    assert inbox.offer(_message(9), OverflowPolicy.REJECT) is not None, "closed: refused"
    got = [inbox.get() for _ in range(4)]
    assert [m.payload[:8] if m else None for m in got] == [
        b"00000000", b"00000001", b"00000002", None]  # fmt: skip


def test_take_all_returns_what_waits_with_payloads(tmp_path: Path) -> None:
    inbox = Inbox(1, waiting_max_bytes=0, spill=SpillFolder(tmp_path, 1 << 20))
    for i in range(4):
        inbox.offer(_message(i), OverflowPolicy.REJECT)
    left = inbox.take_all()
    assert [m.payload[:8] for m in left] == [f"{i:08d}".encode() for i in range(4)]
    assert len(inbox) == 0
    assert inbox.spilled_bytes == 0


def test_a_dead_process_spill_folder_is_removed_at_the_first_spill(tmp_path: Path) -> None:
    # given the spill folder of a process that is gone (a crash), and of this one's pid reused
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / f"run-{dead.stdout.strip()}"
    stale.mkdir()
    (stale / "000000000001").write_bytes(b"old request")
    mine = tmp_path / f"run-{os.getpid()}"
    mine.mkdir()
    (mine / "000000000007").write_bytes(b"from before a crash")
    spill = SpillFolder(tmp_path, 1 << 20)
    inbox = Inbox(0, waiting_max_bytes=0, spill=spill)
    # when the first request is spilled
    assert inbox.offer(_message(1), OverflowPolicy.REJECT) is None
    # then the stale folder and the leftovers are gone, the folder is private
    assert not stale.exists()
    assert [p.name for p in mine.iterdir()] == ["000000000001"]
    assert (mine.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize("budget", [0, 3000])
def test_a_spill_budget_bounds_the_disk(tmp_path: Path, budget: int) -> None:
    inbox = Inbox(0, waiting_max_bytes=0, spill=SpillFolder(tmp_path, budget))
    accepted = sum(inbox.offer(_message(i), OverflowPolicy.REJECT) is None for i in range(10))
    assert accepted == budget // 1000

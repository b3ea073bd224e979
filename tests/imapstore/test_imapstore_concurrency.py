"""Several processes on one Maildir at once: deliveries (as SMTP in another process),
POP3-style moves to cur/ and deletes, flag changes by another IMAP process, while two
sessions here keep syncing. Every process must agree on every UID, UIDs only ascend,
and \\Recent goes to exactly one session per message that reached cur/ through us."""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from pathlib import Path

from imapstore_helpers import deliver

from mailserver.interfaces import IMailboxView
from mailserver.store.registry import drop_idle_states
from mailserver.store.userstore import UserStore

MESSAGES = 120


def _smtp_and_pop3(root: str, seed: int) -> None:
    """Deliver MESSAGES files; now and then act as POP3: RETR (new/ -> cur/ with S)."""
    rng = random.Random(seed)
    folder = Path(root)
    for i in range(MESSAGES):
        deliver(folder, f"m{i}")
        if rng.random() < 0.2:
            for name in os.listdir(folder / "new")[:1]:
                try:
                    os.rename(folder / "new" / name, folder / "cur" / (name + ":2,S"))
                except FileNotFoundError:
                    pass  # an IMAP session claimed it first
        time.sleep(0.001)


def _other_imap_process(root: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Another server process: its own session syncs and flags what it sees."""
    drop_idle_states()
    store = UserStore(Path(root))
    view = store.select("INBOX")
    recent = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        view.sync()
        recent |= {m.uid for m in view.messages if m.recent}
        mine = [m.uid for m in view.messages if "\\Flagged" not in m.flags][:3]
        view.store(mine, "+", ["\\Flagged"])
        if len(view.messages) >= MESSAGES and not os.listdir(Path(root) / "new"):
            break
        time.sleep(0.002)
    view.sync()
    out.put(({m.uid: m.internal_date for m in view.messages}, sorted(recent)))
    view.close()


def check_ascending(view: IMailboxView) -> None:
    uids = [m.uid for m in view.messages]
    assert uids == sorted(set(uids))


def test_processes_and_sessions_agree_on_every_uid(root: Path, store: UserStore) -> None:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    smtp = ctx.Process(target=_smtp_and_pop3, args=(str(root), 7))
    other = ctx.Process(target=_other_imap_process, args=(str(root), out))
    first = store.select("INBOX")
    second = store.select("INBOX")
    smtp.start()
    other.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for view in (first, second):
                changes = view.sync()
                check_ascending(view)
                assert changes.expunged == ()
            if not smtp.is_alive() and not os.listdir(root / "new"):
                break
            time.sleep(0.002)
        smtp.join(timeout=30)
        theirs, their_recent = out.get(timeout=30)
        other.join(timeout=30)
    finally:
        for p in (smtp, other):
            if p.is_alive():
                p.kill()
    first.sync()
    second.sync()
    ours = {m.uid: m.internal_date for m in first.messages}
    assert len(ours) == MESSAGES
    assert theirs == ours  # the other process numbered every message the same way
    assert [m.uid for m in second.messages] == sorted(ours)
    mine_first = {m.uid for m in first.messages if m.recent}
    mine_second = {m.uid for m in second.messages if m.recent}
    assert not mine_first & mine_second
    assert not (mine_first | mine_second) & set(their_recent)  # one session each
    claimed = len(mine_first | mine_second | set(their_recent))
    seen_by_pop3 = sum(1 for m in first.messages if "\\Seen" in m.flags)
    assert claimed + seen_by_pop3 == MESSAGES
    assert os.listdir(root / "new") == []
    # Flags the other process stored reached both sessions here.
    assert any("\\Flagged" in m.flags for m in first.messages)
    assert [m.flags for m in first.messages] == [m.flags for m in second.messages]

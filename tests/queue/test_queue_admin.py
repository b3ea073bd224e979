"""`mailserver queue list|show|flush|delete` in-process, on a real spool on disk.

(The same commands against a running server: tests/integration/test_relay.py.)
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mailserver.admin.cli import main
from mailserver.core.running import hold_running_lock
from mailserver.queue.envelope import (
    DELIVERED,
    FAILED,
    QueueEntry,
    RecipientState,
    new_queue_id,
)
from mailserver.queue.spool import Spool

MESSAGE = (b"From: Alice <alice@example.org>\nTo: bob@example.net\nSubject: quarterly\n"
           b"X-Secret: not shown\n\nThe body is never printed.\n")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "mailserver.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    return path


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "data" / "queue")
    s.ensure_dirs()
    return s


def queued(spool: Spool) -> QueueEntry:
    now = time.time()
    entry = QueueEntry(new_queue_id(), "alice@example.org", [
        RecipientState("bob@example.net", attempts=2, next_try=now + 600,
                       last_error="connect to mx.example.net[192.0.2.1]:25: "
                                  "Connection refused", status="4.4.1"),
        RecipientState("carol@example.net", DELIVERED, 1, "250 2.0.0 Ok", "2.0.0"),
        RecipientState("dan@example.net", FAILED, 1, "550 5.1.1 no such user", "5.1.1",
                       bounced=True),
    ], created=now - 3725, submitter="alice@example.org", size=len(MESSAGE))
    tmp = spool.tmp_path(entry.id, "msg")
    tmp.write_bytes(MESSAGE)
    spool.commit(entry, tmp)
    spool.release(entry.id)
    return entry


def run(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--config", str(config), "queue", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_empty(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, capsys, "list") == (0, "queue list: the queue is empty\n", "")


def test_list(config: Path, spool: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    entry = queued(spool)
    code, out, err = run(config, capsys, "list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "AGE", "SIZE", "SENDER"]
    assert lines[1].split() == [entry.id, "1h", "2m", str(len(MESSAGE)), "<alice@example.org>"]
    assert lines[2].split()[:2] == ["pending", "<bob@example.net>"]
    assert "next try in 9m" in lines[2] or "next try in 10m" in lines[2]
    assert lines[3].strip() == \
        "(connect to mx.example.net[192.0.2.1]:25: Connection refused)"
    assert lines[4].split() == ["delivered", "<carol@example.net>"]
    assert lines[5].split() == ["failed", "<dan@example.net>"]
    assert lines[6].strip() == "(550 5.1.1 no such user)"
    assert lines[-1] == "-- 1 messages, 1 recipients pending"


def test_show(config: Path, spool: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    entry = queued(spool)
    code, out, _ = run(config, capsys, "show", entry.id)
    assert code == 0
    assert f"id:        {entry.id}\n" in out
    assert "sender:    <alice@example.org>\n" in out
    assert "recipient: <bob@example.net>\n  state:      pending\n  attempts:   2\n" in out
    assert "  last error: connect to mx.example.net[192.0.2.1]:25: Connection refused " \
           "[4.4.1]\n" in out
    assert "  Subject: quarterly\n" in out
    assert "X-Secret" not in out and "never printed" not in out
    assert "dsn:" not in out and "needs:" not in out


def test_show_dsn_and_requiretls(config: Path, spool: Spool,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    entry = QueueEntry(new_queue_id(), "alice@example.org", [
        RecipientState("bob@example.net", notify=["SUCCESS", "FAILURE"], orcpt_type="utf-8",
                       orcpt="b\u00f6b\x1b@example.net")],
        ret="HDRS", envid="QQ+314", requiretls=True, size=len(MESSAGE))
    tmp = spool.tmp_path(entry.id, "msg")
    tmp.write_bytes(MESSAGE)
    spool.commit(entry, tmp)
    spool.release(entry.id)
    code, out, _ = run(config, capsys, "show", entry.id)
    assert code == 0
    assert "needs:     REQUIRETLS\n" in out
    assert "dsn:       RET=HDRS ENVID=QQ+314\n" in out
    assert "recipient: <bob@example.net>\n  state:      pending\n  attempts:   0\n" \
           "  dsn:        NOTIFY=SUCCESS,FAILURE ORCPT=utf-8;b\u00f6b?@example.net\n" in out


@pytest.mark.parametrize("args,error", [
    (("show", "0123456789ABCDEF"), "queue show: 0123456789ABCDEF: no such message in the "
                                   "queue\n"),
    (("delete", "../../etc"), "queue delete: '../../ETC' is not a queue id (see "
                              "`mailserver queue list`)\n"),
])
def test_refused(config: Path, spool: Spool, capsys: pytest.CaptureFixture[str],
                 args: tuple[str, ...], error: str) -> None:
    assert run(config, capsys, *args) == (1, "", error)


def test_usage(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, capsys, "show")[0] == 2
    assert run(config, capsys, "bogus")[0] == 2


def test_delete(config: Path, spool: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    entry = queued(spool)
    code, out, _ = run(config, capsys, "delete", entry.id)
    assert code == 0
    assert out == (f"queue delete: {entry.id} deleted (from <alice@example.org>, 1 "
                   "recipients were pending; no bounce is sent)\n")
    assert spool.ids() == [] and list(spool.messages.iterdir()) == []
    assert run(config, capsys, "delete", entry.id)[0] == 1


def test_flush_creates_the_trigger(config: Path, spool: Spool,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    queued(spool)
    run_dir = spool.root.parent / "run"
    run_dir.mkdir()
    lock = hold_running_lock(run_dir)  # what a running server holds (app/listeners.py)
    try:
        code, out, _ = run(config, capsys, "flush")
    finally:
        os.close(lock)
    assert code == 0
    assert out == "queue flush: asked the running server to retry 1 pending recipients now\n"
    assert spool.flush_trigger.exists()


@pytest.mark.parametrize("leftover", [False, True])
def test_flush_without_a_server_says_so_and_keeps_the_trigger(
        config: Path, spool: Spool, capsys: pytest.CaptureFixture[str],
        leftover: bool) -> None:
    queued(spool)
    data_dir = spool.root.parent
    if leftover:  # a server ran here once: its lock file and listeners.json remain
        (data_dir / "run").mkdir()
        os.close(hold_running_lock(data_dir / "run"))
        (data_dir / "run" / "listeners.json").write_text('{"smtp": ["127.0.0.1", 2525]}')
    code, out, err = run(config, capsys, "flush")
    assert code == 1
    assert out == ""
    assert err == (f"queue flush: no server is running on {data_dir}: the trigger "
                   f"{spool.flush_trigger} stays, and the server retries the 1 pending "
                   "recipients when it starts\n")
    assert spool.flush_trigger.exists()


def test_hostile_reply_and_header_text_cannot_drive_the_terminal(
        config: Path, spool: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    # A remote server's reply and any sender's headers are printed to the operator's
    # terminal: an ESC sequence in them must come out inert.
    entry = queued(spool)
    entry.recipients[0].last_error = "451 4.3.0 \x1b]0;owned\x07\x1b[2Jbusy"
    spool.save(entry)
    tmp = spool.tmp_path(entry.id, "msg")
    tmp.write_bytes("Subject: \x1b[31mred\x1b[0m\x9b1m\n\nbody\n".encode())
    os.replace(tmp, spool.messages / entry.id)
    for args in (("list",), ("show", entry.id)):
        code, out, _ = run(config, capsys, *args)
        assert code == 0
        assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    assert "451 4.3.0 ?]0;owned??[2Jbusy" in out
    assert "Subject: ?[31mred?[0m?1m" in out


def test_list_says_when_entries_were_set_aside(
        config: Path, spool: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    (spool.corrupt / "0123456789ABCDEF").write_bytes(b"\x00not json")
    code, out, _ = run(config, capsys, "list")
    assert code == 0
    assert out.splitlines() == [
        "queue list: the queue is empty",
        f"-- 1 entries set aside in {spool.corrupt} (never sent; see the server log for "
        "why)"]

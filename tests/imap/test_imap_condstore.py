"""CONDSTORE and QRESYNC (RFC 7162) in the IMAP session, against the real store: the
responses a client reads, and the hostile forms (out-of-range mod-sequences, QRESYNC
without ENABLE, garbage known-uids, UNCHANGEDSINCE 0)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from session_harness import Session, make_config
from test_imap_session import append

from mailserver.config_sections import ClusterConfig


@pytest.fixture
def s(tmp_path: Path) -> Session:
    session = Session(tmp_path)
    session.login()
    append(session, 4)
    return session


def _highest(lines: list[bytes]) -> int:
    for line in lines:
        found = re.fullmatch(rb"\* OK \[HIGHESTMODSEQ (\d+)\] Highest", line)
        if found:
            return int(found.group(1))
    raise AssertionError(f"no HIGHESTMODSEQ in {lines}")


def _modseq(line: bytes) -> int:
    found = re.search(rb"MODSEQ \((\d+)\)", line)
    assert found is not None, line
    return int(found.group(1))


def test_capabilities_offer_condstore_and_qresync(s: Session) -> None:
    caps = s.command(b"c CAPABILITY")[0].split()
    assert b"CONDSTORE" in caps and b"QRESYNC" in caps


def test_select_condstore_fetch_and_store_raise_modseqs(s: Session) -> None:
    lines = s.command(b"s SELECT INBOX (CONDSTORE)")
    highest = _highest(lines)
    assert lines[-1] == b"s OK [READ-WRITE] Select completed"
    fetched = s.command(b"f FETCH 1:4 (UID MODSEQ)")
    assert fetched == [b"* %d FETCH (UID %d MODSEQ (%d))" % (n, n, highest)
                       for n in range(1, 5)] + [b"f OK Fetch completed"]
    stored = s.command(b"t STORE 2 +FLAGS (\\Flagged)")
    assert stored == [b"* 2 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (%d))" % (highest + 1),
                      b"t OK Store completed"]
    # CHANGEDSINCE implies MODSEQ and names only what changed (RFC 7162 3.1.4.1).
    assert s.command(b"g FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % highest) == [
        b"* 2 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (%d))" % (highest + 1),
        b"g OK Fetch completed"]
    assert s.command(b"u UID SEARCH MODSEQ %d" % (highest + 1)) == [
        b"* SEARCH 2 (MODSEQ %d)" % (highest + 1), b"u OK Search completed"]
    assert s.command(b"v SEARCH MODSEQ \"/flags/\\\\flagged\" all %d" % (highest + 2)) == [
        b"* SEARCH", b"v OK Search completed"]
    assert s.command(b"st STATUS INBOX (HIGHESTMODSEQ)") == [
        b"* STATUS INBOX (HIGHESTMODSEQ %d)" % (highest + 1), b"st OK Status completed"]


def test_a_condstore_enabling_fetch_says_highestmodseq_first(s: Session) -> None:
    """RFC 7162 3.1: the first CONDSTORE-enabling command on a selected mailbox is
    answered with HIGHESTMODSEQ (ImapTest's esearch-condstore relies on it)."""
    s.command(b"s SELECT INBOX")
    lines = s.command(b"f FETCH 1 MODSEQ")
    highest = _highest(lines[:1])
    assert lines[1:] == [b"* 1 FETCH (MODSEQ (%d))" % highest, b"f OK Fetch completed"]
    # Once on, STORE .SILENT still says the new MODSEQ (RFC 7162 3.1.3).
    assert s.command(b"t STORE 3 +FLAGS.SILENT (\\Seen)") == [
        b"* 3 FETCH (MODSEQ (%d))" % (highest + 1), b"t OK Store completed"]


def test_changedsince_zero_names_every_message_and_the_top_none(s: Session) -> None:
    s.command(b"s SELECT INBOX (CONDSTORE)")
    assert len(s.command(b"a FETCH 1:* (UID) (CHANGEDSINCE 0)")) == 5
    top = 2**63 - 1
    assert s.command(b"b FETCH 1:* (UID) (CHANGEDSINCE %d)" % top) == [b"b OK Fetch completed"]
    assert s.command(b"c FETCH 1:* (UID) (CHANGEDSINCE %d)" % 2**63) == [
        b"c BAD mod-sequence out of range (2^63-1 at most)"]
    assert s.command(b"d FETCH 1:* (UID) (CHANGEDSINCE 99999999999999999999999)") == [
        b"d BAD mod-sequence out of range (2^63-1 at most)"]
    assert s.command(b"e FETCH 1:* (UID) (CHANGEDSINCE x)") == [
        b"e BAD expected a mod-sequence"]
    assert s.command(b"f FETCH 1:* (UID) (CHANGEDSINCE 1 CHANGEDSINCE 2)") == [
        b"f BAD unknown or repeated FETCH modifier CHANGEDSINCE"]


def test_unchangedsince_zero_refuses_every_message(s: Session) -> None:
    s.command(b"s SELECT INBOX")
    assert s.command(b"t STORE 1,3 (UNCHANGEDSINCE 0) +FLAGS (\\Deleted)")[-1] == (
        b"t OK [MODIFIED 1,3] Conditional STORE failed")
    assert s.command(b"f FETCH 1:4 FLAGS")[:4] == [
        b"* %d FETCH (FLAGS (\\Recent))" % n for n in range(1, 5)]
    assert s.command(b"x STORE 1 (UNCHANGEDSINCE 1 +FLAGS (\\Seen)")[-1].startswith(b"x BAD")


def test_unchangedsince_stores_the_unchanged_and_names_the_modified(s: Session) -> None:
    highest = _highest(s.command(b"s SELECT INBOX (CONDSTORE)"))
    s.command(b"a STORE 2 +FLAGS (\\Answered)")
    lines = s.command(b"t UID STORE 1:3 (UNCHANGEDSINCE %d) +FLAGS.SILENT (\\Seen)" % highest)
    assert lines == [b"* 1 FETCH (UID 1 MODSEQ (%d))" % (highest + 2),
                     b"* 3 FETCH (UID 3 MODSEQ (%d))" % (highest + 2),
                     b"t OK [MODIFIED 2] Conditional STORE failed"]
    assert s.command(b"f FETCH 2 FLAGS")[0] == b"* 2 FETCH (FLAGS (\\Answered \\Recent))"


def test_enable_and_qresync_select_reports_vanished_and_changes(tmp_path: Path) -> None:
    a, b = Session(tmp_path), Session(tmp_path)
    a.login()
    b.login()
    append(a, 6)
    assert a.command(b"e ENABLE QRESYNC CONDSTORE X-UNKNOWN") == [
        b"* ENABLED QRESYNC CONDSTORE", b"e OK Enable completed"]
    lines = a.command(b"s SELECT INBOX")
    highest = _highest(lines)
    validity = int(re.search(rb"UIDVALIDITY (\d+)", b" ".join(lines)).group(1))  # type: ignore[union-attr]
    a.command(b"c CLOSE")
    b.command(b"s SELECT INBOX")
    b.command(b"t STORE 2 +FLAGS (\\Seen)")
    b.command(b"d STORE 3,5 +FLAGS (\\Deleted)")
    b.command(b"x EXPUNGE")
    lines = a.command(b"q SELECT INBOX (QRESYNC (%d %d))" % (validity, highest))
    assert b"* VANISHED (EARLIER) 3,5" in lines
    changed = [line for line in lines if b"FETCH" in line]
    assert [line.split(b" MODSEQ")[0] for line in changed] == [
        b"* 2 FETCH (UID 2 FLAGS (\\Seen)"]
    assert _modseq(changed[0]) > highest
    assert lines.index(b"* VANISHED (EARLIER) 3,5") < lines.index(changed[0])
    # known-uids narrows both (RFC 7162 3.2.5.1).
    lines = a.command(b"r SELECT INBOX (QRESYNC (%d %d 4:6))" % (validity, highest))
    assert lines[0] == b"* OK [CLOSED] Previous mailbox closed"
    assert b"* VANISHED (EARLIER) 5" in lines
    assert not [line for line in lines if b"FETCH" in line]


def test_qresync_with_a_wrong_uidvalidity_is_an_ordinary_select(s: Session) -> None:
    s.command(b"e ENABLE QRESYNC")
    lines = s.command(b"q SELECT INBOX (QRESYNC (1 1 1:4))")
    assert not [line for line in lines if b"VANISHED" in line or b"FETCH" in line]
    _highest(lines)
    assert lines[-1] == b"q OK [READ-WRITE] Select completed"


def test_qresync_hostile_forms_are_bad(s: Session) -> None:
    assert s.command(b"q SELECT INBOX (QRESYNC (1 1))") == [
        b"q BAD [CLIENTBUG] QRESYNC must be enabled first (ENABLE QRESYNC)"]
    s.command(b"e ENABLE QRESYNC")
    for garbage in (b"1 1 x", b"1 1 1:*", b"1 1 0:4", b"1 1 1,,2", b"1 1 (1:2 3)",
                    b"0 1", b"1 0", b"1 %d" % 2**63, b"1 1 1:4 (1:2 3:5)", b"1", b""):
        reply = s.command(b"q SELECT INBOX (QRESYNC (" + garbage + b"))")
        assert len(reply) == 1 and reply[0].startswith(b"q BAD "), (garbage, reply)
    # The session is still fine, and nothing was selected.
    assert s.command(b"f FETCH 1 FLAGS") == [b"f BAD FETCH needs a selected mailbox"]
    assert s.command(b"s SELECT INBOX (CONDSTORE CONDSTORE)") == [
        b"s BAD unknown or repeated SELECT parameter CONDSTORE"]


def test_vanished_replaces_expunge_once_qresync_is_enabled(tmp_path: Path) -> None:
    a, b = Session(tmp_path), Session(tmp_path)
    a.login()
    b.login()
    append(a, 3)
    a.command(b"e ENABLE QRESYNC")
    a.command(b"s SELECT INBOX")
    b.command(b"s SELECT INBOX")
    b.command(b"t STORE 1 +FLAGS (\\Flagged)")
    lines = a.command(b"n NOOP")
    assert len(lines) == 2 and lines[0].startswith(b"* 1 FETCH (UID 1 FLAGS (\\Flagged")
    assert _modseq(lines[0]) > 0
    a.command(b"d STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert a.command(b"x EXPUNGE") == [b"* VANISHED 2", b"x OK Expunge completed"]
    b.command(b"d STORE 3 +FLAGS.SILENT (\\Deleted)")
    b.command(b"x EXPUNGE")
    assert a.command(b"n NOOP") == [b"* VANISHED 3", b"n OK Noop completed"]


def test_uid_fetch_vanished_needs_qresync_and_uid(s: Session) -> None:
    s.command(b"s SELECT INBOX")
    assert s.command(b"a UID FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)") == [
        b"a BAD [CLIENTBUG] VANISHED needs ENABLE QRESYNC first"]
    assert s.command(b"b FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)") == [
        b"b BAD VANISHED is for UID FETCH only (RFC 7162 3.2.6)"]
    assert s.command(b"c UID FETCH 1:* FLAGS (VANISHED)") == [
        b"c BAD VANISHED needs CHANGEDSINCE (RFC 7162 3.2.6)"]


def test_uid_fetch_vanished_names_expunged_uids_of_the_set(tmp_path: Path) -> None:
    s = Session(tmp_path)
    s.login()
    append(s, 5)
    s.command(b"e ENABLE QRESYNC")
    highest = _highest(s.command(b"s SELECT INBOX"))
    s.command(b"d STORE 1,4 +FLAGS.SILENT (\\Deleted)")
    s.command(b"x EXPUNGE")
    assert s.command(b"f UID FETCH 2:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % highest) == [
        b"* VANISHED (EARLIER) 4", b"f OK Fetch completed"]


def test_examine_condstore_is_read_only_and_claims_nothing(s: Session) -> None:
    lines = s.command(b"s EXAMINE INBOX (CONDSTORE)")
    _highest(lines)
    assert lines[-1] == b"s OK [READ-ONLY] Examine completed"
    assert s.command(b"t STORE 1 (UNCHANGEDSINCE 5) +FLAGS (\\Seen)") == [
        b"t NO [CANNOT] Mailbox is read-only (EXAMINE)"]


def test_every_fetch_has_uid_once_qresync_is_enabled(s: Session) -> None:
    """RFC 7162 3.2.4 (ImapTest's stress run with qresync checks it)."""
    s.command(b"e ENABLE QRESYNC")
    highest = _highest(s.command(b"s SELECT INBOX"))
    assert s.command(b"f FETCH 1 FLAGS") == [b"* 1 FETCH (UID 1 FLAGS (\\Recent))",
                                             b"f OK Fetch completed"]
    assert s.command(b"t STORE 2 +FLAGS.SILENT (\\Seen)") == [
        b"* 2 FETCH (UID 2 MODSEQ (%d))" % (highest + 1), b"t OK Store completed"]


def test_esearch_reports_the_modseq_asked_for(s: Session) -> None:
    """RFC 7162 3.1.5 with RFC 4731: an ESEARCH of a SEARCH with MODSEQ ends in
    MODSEQ n: of the MIN and/or MAX message when only those were asked for, else the
    highest of every message found; nothing found, no MODSEQ (ImapTest's
    esearch-condstore group)."""
    s.command(b"s SELECT INBOX (CONDSTORE)")
    modseqs = {}
    for n in (1, 3, 2, 4):  # stored in this order: 1 < 3 < 2 < 4
        modseqs[n] = _modseq(s.command(b"t%d STORE %d +FLAGS (\\Seen)" % (n, n))[0])
    assert modseqs[1] < modseqs[3] < modseqs[2] < modseqs[4]

    def esearch(returns: bytes, sequence: bytes = b"1:3", since: int = 1) -> bytes:
        lines = s.command(b"e SEARCH RETURN (%s) %s MODSEQ \"/flags/\\\\seen\" all %d"
                          % (returns, sequence, since))
        assert lines[-1] == b"e OK Search completed", lines
        return lines[0]

    assert esearch(b"MIN") == b'* ESEARCH (TAG "e") MIN 1 MODSEQ %d' % modseqs[1]
    assert esearch(b"MAX") == b'* ESEARCH (TAG "e") MAX 3 MODSEQ %d' % modseqs[3]
    assert esearch(b"") == b'* ESEARCH (TAG "e") ALL 1:3 MODSEQ %d' % modseqs[2]
    assert esearch(b"MIN MAX", b"2:3") == (
        b'* ESEARCH (TAG "e") MIN 2 MAX 3 MODSEQ %d' % modseqs[2])
    assert esearch(b"COUNT", b"1:4") == b'* ESEARCH (TAG "e") COUNT 4 MODSEQ %d' % modseqs[4]
    assert esearch(b"ALL", b"2:3", modseqs[4]) == b'* ESEARCH (TAG "e")'


def test_sort_and_thread_with_modseq_enable_condstore_and_match(s: Session) -> None:
    """RFC 7162 3.1.5/3.1.6: MODSEQ is a search key of SORT too, CONDSTORE-enabling, and
    the SORT response ends with the highest modseq found; before, a SORT or THREAD on a
    session that had not enabled CONDSTORE matched nothing (the modseq database was not
    recorded yet) and SORT never said its MODSEQ."""
    s.command(b"s SELECT INBOX")
    lines = s.command(b"a SORT (REVERSE ARRIVAL) UTF-8 MODSEQ 1")
    highest = _highest(lines[:1])
    assert lines[1:] == [b"* SORT 4 3 2 1 (MODSEQ %d)" % highest, b"a OK Sort completed"]
    assert s.command(b"t STORE 2 +FLAGS.SILENT (\\Flagged)") == [
        b"* 2 FETCH (MODSEQ (%d))" % (highest + 1), b"t OK Store completed"]
    assert s.command(b"b UID SORT (ARRIVAL) UTF-8 MODSEQ %d" % (highest + 1)) == [
        b"* SORT 2 (MODSEQ %d)" % (highest + 1), b"b OK Sort completed"]
    assert s.command(b"c SORT (ARRIVAL) UTF-8 MODSEQ %d" % (highest + 2)) == [
        b"* SORT", b"c OK Sort completed"]
    # ESORT: MIN and MAX are the first and last in sort order (RFC 5267 3.1), and
    # theirs is the modseq reported (2 was stored last, so it has the higher one).
    assert s.command(b"d SORT RETURN (MIN) (REVERSE ARRIVAL) UTF-8 2:4 MODSEQ 1") == [
        b'* ESEARCH (TAG "d") MIN 4 MODSEQ %d' % highest, b"d OK Sort completed"]
    assert s.command(b"e SORT RETURN (MAX) (REVERSE ARRIVAL) UTF-8 2:4 MODSEQ 1") == [
        b'* ESEARCH (TAG "e") MAX 2 MODSEQ %d' % (highest + 1), b"e OK Sort completed"]


def test_thread_with_modseq_enables_condstore(s: Session) -> None:
    s.command(b"s SELECT INBOX")
    lines = s.command(b"a THREAD REFERENCES UTF-8 MODSEQ 1")
    _highest(lines[:1])
    assert lines[1:] == [b"* THREAD (1)(2)(3)(4)", b"a OK Thread completed"]


def test_cluster_mode_offers_neither_condstore_nor_qresync(tmp_path: Path) -> None:
    """Decision 0039: each node keeps its own modseq database, so in cluster mode the
    extensions are not advertised, not enabled, and their commands are BAD."""
    config = dataclasses.replace(make_config(tmp_path), cluster=ClusterConfig(
        node="n1", nodes={"n1": "127.0.0.1"}))
    s = Session(tmp_path, config)
    s.login()
    append(s, 2)
    caps = s.command(b"c CAPABILITY")[0].split()
    assert b"CONDSTORE" not in caps and b"QRESYNC" not in caps and b"IDLE" in caps
    assert s.command(b"e ENABLE CONDSTORE QRESYNC") == [b"* ENABLED", b"e OK Enable completed"]
    refused = (b"BAD [CLIENTBUG] CONDSTORE and QRESYNC are not offered by this server "
               b"(RFC 7162)")
    assert s.command(b"s SELECT INBOX (CONDSTORE)") == [b"s " + refused]
    s.command(b"t SELECT INBOX")
    assert s.command(b"f FETCH 1:* (UID) (CHANGEDSINCE 1)") == [b"f " + refused]
    assert s.command(b"m FETCH 1 MODSEQ") == [b"m " + refused]
    assert s.command(b"u UID SEARCH MODSEQ 1") == [b"u " + refused]
    assert s.command(b"x STORE 1 (UNCHANGEDSINCE 5) +FLAGS (\\Seen)") == [b"x " + refused]
    assert s.command(b"y STATUS INBOX (HIGHESTMODSEQ)") == [b"y " + refused]
    assert s.command(b"z STORE 1 +FLAGS (\\Seen)") == [
        b"* 1 FETCH (FLAGS (\\Seen \\Recent))", b"z OK Store completed"]

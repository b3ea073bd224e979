"""Arbitrary bytes at the session: it never raises, every reply is well-formed SMTP,
and what it holds in memory stays bounded."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_smtp_session import Session

from mailserver.core.flow import MAX_PENDING_INPUT
from mailserver.smtp.server import MAX_COMMAND_LINE

REPLY = re.compile(r"^[2-5][0-9][0-9][ -]")

# Fragments a hostile client would combine: real commands, end-of-data look-alikes,
# bare CR/LF, NUL, 8-bit, long runs.
FRAGMENTS = st.sampled_from([
    b"EHLO x\r\n", b"HELO x\r\n", b"MAIL FROM:<a@x.test>\r\n", b"MAIL FROM:<>\r\n",
    b"RCPT TO:<bob@example.org>\r\n", b"RCPT TO:<x@evil.test>\r\n", b"DATA\r\n",
    b"BDAT 5\r\n", b"BDAT 0 LAST\r\n", b"BDAT 3 LAST\r\n", b"RSET\r\n", b"NOOP\r\n",
    b"\r\n.\r\n", b".\r\n", b"\n.\n", b"\r.\r", b"\r\n", b"\n", b"\r", b"\x00", b"\xff\xfe",
    b"..", b"x" * 3000, b"STARTTLS\r\n", b"AUTH PLAIN\r\n", b"VRFY a\r\n", b"QUIT\r\n",
])
STREAMS = st.lists(st.one_of(FRAGMENTS, st.binary(max_size=64)), max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=STREAMS, commit_ok=st.booleans())
def test_random_streams(chunks: list[bytes], commit_ok: bool) -> None:
    s = Session()
    s.replies()
    for chunk in chunks:
        s.protocol.dataReceived(chunk)
        # Fire any pending commit, as the disk would.
        for t in s.target.transactions:
            if t.commit_deferred is not None and not t.commit_deferred.called:
                if commit_ok:
                    t.commit_deferred.callback(None)
                else:
                    t.commit_deferred.errback(OSError("injected"))
        assert len(s.protocol._buffer) <= max(MAX_COMMAND_LINE, MAX_PENDING_INPUT) + len(chunk)
    for line in s.replies():
        assert REPLY.match(line), line
    if s.transport.disconnecting:
        s.protocol.connectionLost(None)  # type: ignore[arg-type]
        assert_no_orphans(s)
        return
    # Whatever happened, a session still open can be brought back to a clean state
    # unless it is in the middle of a message.
    if not s.protocol._receiving:
        # CRLF first: a stream may end inside a line ("RCPT "), which RSET would finish.
        replies = s.send(b"\r\nRSET\r\n")
        assert replies and replies[-1].startswith(("250 ", "421 ", "500 "))
    s.protocol.connectionLost(None)  # type: ignore[arg-type]
    assert_no_orphans(s)


def assert_no_orphans(s: Session) -> None:
    """Every transaction was either committed or aborted: no stray tmp/ files."""
    for t in s.target.transactions:
        assert t.aborted or (t.commit_deferred is not None and t.commit_deferred.called)

"""Arbitrary bytes at the POP3 session: it never raises, every reply line is +OK, -ERR,
a continuation or part of a multi-line response, what it buffers stays bounded, and no
message is deleted without QUIT."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pop3_helpers import put_message
from test_pop3_session import Harness

from mailserver.pop3.grammar import MAX_AUTH_LINE
from mailserver.pop3.server import MAX_PENDING_INPUT

FRAGMENTS = st.sampled_from([
    b"USER alice@example.org\r\n", b"PASS secret\r\n", b"PASS wrong\r\n", b"CAPA\r\n",
    b"AUTH PLAIN\r\n", b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==\r\n", b"*\r\n",
    b"STAT\r\n", b"LIST\r\n", b"LIST 1\r\n", b"UIDL\r\n", b"RETR 1\r\n", b"RETR 2\r\n",
    b"RETR 0\r\n", b"TOP 1 0\r\n", b"DELE 1\r\n", b"RSET\r\n", b"NOOP\r\n", b"STLS\r\n",
    b"APOP a b\r\n", b"\r\n", b"\n", b"\r", b"\x00", b"\xff\xfe", b"x" * 3000, b" ",
])
STREAMS = st.lists(st.one_of(FRAGMENTS, st.binary(max_size=64)), max_size=40)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=STREAMS)
def test_random_streams(chunks: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pop = Harness(Path(tmp))
        files = [put_message(pop.maildir, b"Subject: a\n\n.x\n"),
                 put_message(pop.maildir, b"Subject: b\n\nb\n")]
        c = pop.connect()
        for chunk in chunks:
            c.protocol.dataReceived(chunk)
            assert len(c.protocol._buffer) <= max(MAX_PENDING_INPUT, MAX_AUTH_LINE) + 64
            if c.transport.disconnecting:
                break
        out = c.raw()
        # Every response starts a line with +OK, -ERR or "+ " (AUTH continuation);
        # multi-line bodies follow a "+OK" and end with ".".
        first_lines = [line for line in out.split(b"\r\n") if line.startswith((b"+", b"-"))]
        assert all(line.startswith((b"+OK", b"-ERR ", b"+ ")) for line in first_lines)
        c.drop()
        remaining = [*(pop.maildir / "new").iterdir(), *(pop.maildir / "cur").iterdir()]
        if b"QUIT" not in b"".join(chunks).upper():
            assert len(remaining) == len(files)  # no QUIT, no UPDATE: nothing deleted

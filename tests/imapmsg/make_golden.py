"""Regenerate tests/imapmsg/golden/*.json from Dovecot's answers for the same messages.

    python tests/imapmsg/make_golden.py        (needs /usr/lib/dovecot/imap; run as root)

Each message of tests/imapmsg/messages/ goes into a throw-away Maildir (LF line ends,
as our store keeps them; Dovecot serves CRLF, as ours does), then Dovecot's imap binary
runs in PREAUTH mode on stdin/stdout and answers one FETCH per item of ITEMS. The
golden file keeps, per item, the value as Dovecot sent it (ENVELOPE, BODY,
BODYSTRUCTURE: the exact wire bytes) or the section's content (BODY[...]: the octets of
the string or literal, null for NIL). They are data: reference outputs of another
implementation, checked by test_imapmsg_golden.py against ours.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MESSAGES = HERE / "messages"
GOLDEN = HERE / "golden"
DOVECOT_IMAP = "/usr/lib/dovecot/imap"

#: What we ask of every message: structure items, then sections with and without parts.
ITEMS = (
    "ENVELOPE", "BODYSTRUCTURE", "BODY",
    "BODY.PEEK[]", "BODY.PEEK[HEADER]", "BODY.PEEK[TEXT]",
    "BODY.PEEK[HEADER.FIELDS (FROM SUBJECT X-NOPE)]",
    "BODY.PEEK[HEADER.FIELDS.NOT (FROM SUBJECT)]",
    "BODY.PEEK[HEADER.FIELDS (X-CUSTOM MESSAGE-ID)]",
    "BODY.PEEK[1]", "BODY.PEEK[1.MIME]", "BODY.PEEK[1.HEADER]", "BODY.PEEK[1.TEXT]",
    "BODY.PEEK[2]", "BODY.PEEK[2.MIME]", "BODY.PEEK[2.HEADER]", "BODY.PEEK[2.TEXT]",
    "BODY.PEEK[2.1]", "BODY.PEEK[2.1.MIME]", "BODY.PEEK[2.2]", "BODY.PEEK[1.1]",
    "BODY.PEEK[1.2]", "BODY.PEEK[1.2.2]", "BODY.PEEK[1.2.1.MIME]", "BODY.PEEK[3]",
    "BODY.PEEK[9]", "BODY.PEEK[2.1.1]", "BODY.PEEK[1.1.1]",
    "BODY.PEEK[2.HEADER.FIELDS (SUBJECT)]",
    "BODY.PEEK[]<0.10>", "BODY.PEEK[TEXT]<5.7>", "BODY.PEEK[1]<1000000.5>",
)

_CONF = """\
mail_location = maildir:{maildir}
log_path = {root}/log
mail_uid = 65534
mail_gid = 65534
first_valid_uid = 0
first_valid_gid = 0
ssl = no
"""


def read_responses(out: bytes) -> list[bytes]:
    """Every untagged `* 1 FETCH (...)` response, literals inlined as sent."""
    responses: list[bytes] = []
    i = 0
    while i < len(out):
        j = out.find(b"\r\n", i)
        if j < 0:
            break
        line = out[i:j + 2]
        i = j + 2
        # A line ending in {n}: n octets of literal follow, then the line goes on.
        while (m := re.search(rb"\{(\d+)\}\r\n\Z", line)) is not None:
            n = int(m.group(1))
            line += out[i:i + n]
            i += n
            j = out.find(b"\r\n", i)
            line += out[i:j + 2]
            i = j + 2
        if line.startswith(b"* 1 FETCH ("):
            responses.append(line[len(b"* 1 FETCH ("):-3])
    return responses


def item_value(response: bytes) -> bytes:
    """The value after the item's label (`BODY[1.MIME]<0> `, `ENVELOPE `)."""
    if response.startswith(b"BODY["):
        depth = 0
        for k, c in enumerate(response):
            if c == ord("["):
                depth += 1
            elif c == ord("]"):
                depth -= 1
                if depth == 0:
                    rest = response[k + 1:]
                    m = re.match(rb"(?:<\d+>)? ", rest)
                    assert m is not None, response[:200]
                    return rest[m.end():]
    return response.split(b" ", 1)[1]


def string_content(value: bytes) -> bytes | None:
    """The octets of an IMAP string/literal value, None for NIL."""
    if value == b"NIL":
        return None
    m = re.match(rb"\{(\d+)\}\r\n", value)
    if m is not None:
        return value[m.end():m.end() + int(m.group(1))]
    assert value.startswith(b'"') and value.endswith(b'"'), value[:100]
    return re.sub(rb"\\(.)", rb"\1", value[1:-1])


def dovecot_answers(message: bytes) -> dict[str, str | None]:
    root = Path(tempfile.mkdtemp(prefix="imapmsg-golden-"))
    try:
        maildir = root / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        (maildir / "cur" / "1700000000.M1P1.golden:2,").write_bytes(message)
        (root / "home").mkdir()
        conf = root / "dovecot.conf"
        conf.write_text(_CONF.format(maildir=maildir, root=root))
        subprocess.run(["chown", "-R", "65534:65534", str(root)], check=True)
        commands = b"s SELECT INBOX\r\n" + b"".join(
            b"f%d FETCH 1 (%s)\r\n" % (n, item.encode()) for n, item in enumerate(ITEMS)
        ) + b"z LOGOUT\r\n"
        env = {"USER": "golden", "HOME": str(root / "home"), "PATH": os.environ["PATH"]}
        proc = subprocess.run([DOVECOT_IMAP, "-c", str(conf)], input=commands,
                              capture_output=True, env=env, timeout=30, check=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    responses = read_responses(proc.stdout)
    assert len(responses) == len(ITEMS), proc.stdout[-2000:]
    golden: dict[str, str | None] = {}
    for item, response in zip(ITEMS, responses, strict=True):
        value = item_value(response)
        if item.startswith("BODY.PEEK["):
            content = string_content(value)
            golden[item] = None if content is None else content.decode("latin-1")
        else:
            golden[item] = value.decode("latin-1")
    return golden


def main() -> None:
    GOLDEN.mkdir(exist_ok=True)
    for path in sorted(MESSAGES.glob("*.eml")):
        golden = dovecot_answers(path.read_bytes())
        out = GOLDEN / (path.stem + ".json")
        out.write_text(json.dumps(golden, indent=1, ensure_ascii=True) + "\n")
        print(out.relative_to(HERE))


if __name__ == "__main__":
    main()

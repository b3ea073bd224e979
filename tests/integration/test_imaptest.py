"""Dovecot's ImapTest against the real server: the scripted groups that caught a bug.

`search-size` failed whenever `search-header` had run first: both delete and make again
the mailbox "imaptest", and the second saw the first's RFC822.SIZE (a folder deleted and
made again kept its old sizes). The binary is not packaged in Debian; it ships in the
shared tools next to the repository (../shared/tools/imaptest, see its README.md) and
needs dovecot-core and libunwind8 (Makefile `tools`). IMAPTEST overrides the path.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from server_harness import PASSWORD, RunningServer

ROOT = Path(__file__).resolve().parents[2]
USER = "alice@example.org"


def imaptest_binary() -> Path:
    """../shared/tools/imaptest/imaptest of the repository (or of the worktrees'
    parent, for a git worktree beside the main checkout), or $IMAPTEST."""
    if os.environ.get("IMAPTEST"):
        return Path(os.environ["IMAPTEST"])
    for base in (ROOT.parent, ROOT.parent.parent):
        candidate = base / "shared" / "tools" / "imaptest" / "imaptest"
        if candidate.exists():
            return candidate
    pytest.fail(f"ImapTest not found in {ROOT.parent}/shared/tools/imaptest (or set "
                "IMAPTEST): it ships with the shared tools, see its README.md")


def run_group(binary: Path, server: RunningServer, group: str) -> str:
    result = subprocess.run(
        [str(binary), "host=127.0.0.1", f"port={server.ports['imap']}", f"user={USER}",
         f"pass={PASSWORD}", f"test={binary.parent / 'tests' / group}"],
        capture_output=True, text=True, timeout=120)
    return result.stdout + result.stderr


@pytest.mark.timeout(300)
def test_search_size_after_search_header(server_factory: Callable[..., RunningServer]
                                         ) -> None:
    binary = imaptest_binary()
    server = server_factory(users=(USER,),
                            listen={"imap": "tcp:0:interface=127.0.0.1"},
                            auth={"allow_plaintext_without_tls": True})
    # Four rounds: whether the bug showed depended on the file system handing the
    # deleted folder's inode numbers back, so one round caught it about one time in
    # three here. This is the independent suite's view; the deterministic tests are
    # tests/imap/test_imap_bounds.py and tests/imapstore/test_imapstore_validity.py.
    for group, commands in [("search-header", 16), ("search-size", 8)] * 4:
        output = run_group(binary, server, group)
        assert "1 test groups: 0 failed" in output, f"{group}:\n{output[-3000:]}"
        counted = re.search(r"base protocol: (\d+)/(\d+) individual commands failed", output)
        assert counted is not None and counted.groups() == ("0", str(commands)), output


#: ImapTest's groups for the extensions of issue 15 that this server offers, with the
#: number of commands each runs (a group whose capability we did not advertise would
#: run none and "pass": the count makes that a failure).
EXTENSION_GROUPS = {
    "multiappend": 4,
    "catenate": 29,
    "catenate-multiappend": 15,
    "listext": 34,
    "list": 23,
    "subscribe": 24,
    "fetch-binary-mime": 11,
    "fetch-binary-mime-base64": 12,
    "fetch-binary-mime-qp": 8,
    "append-binary": 5,
}


@pytest.mark.timeout(300)
def test_extension_groups(server_factory: Callable[..., RunningServer]) -> None:
    binary = imaptest_binary()
    server = server_factory(users=(USER,),
                            listen={"imap": "tcp:0:interface=127.0.0.1"},
                            auth={"allow_plaintext_without_tls": True})
    results: dict[str, tuple[int, int]] = {}
    outputs: list[str] = []
    for group in EXTENSION_GROUPS:
        output = run_group(binary, server, group)
        counts = re.findall(
            r"(?:base protocol|extensions): (\d+)/(\d+) individual commands failed", output)
        failed_groups = 0 if "1 test groups: 0 failed" in output else 1
        results[group] = (failed_groups + sum(int(f) for f, _ in counts),
                          sum(int(t) for _, t in counts))
        outputs.append(f"{group}:\n{output[-1500:]}")
    assert results == {g: (0, n) for g, n in EXTENSION_GROUPS.items()}, "\n".join(outputs)

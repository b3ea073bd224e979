"""POP3 and IMAP reach the store only through interfaces.py (IMailboxOpener, IMaildrop,
IUserStore, IMailboxView), opened through the ServerContext; a module of theirs that
imports mailserver.store has reached past the seam."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mailserver

PACKAGE = Path(mailserver.__file__).parent


def store_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [n for n in names if n == "mailserver.store"
                  or n.startswith("mailserver.store.")]
    return found


@pytest.mark.parametrize("protocol", ["pop3", "imap"])
def test_protocol_imports_no_store_module(protocol: str) -> None:
    modules = sorted((PACKAGE / protocol).glob("*.py"))
    assert modules
    assert {m.name: store_imports(m) for m in modules if store_imports(m)} == {}


def test_the_check_sees_store_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from mailserver.store import maildrop\nimport mailserver.store.names\n"
                     "from mailserver import storefront\n")
    assert store_imports(probe) == ["mailserver.store", "mailserver.store.maildrop",
                                    "mailserver.store.names"]

"""Who may import whom inside mailserver/: the layers of docs/architecture.md, checked.

Read from the source with ast (no import is executed), so a lazy import inside a
function counts as much as one at the top. The rules, bottom up:

- the base modules (address, reply, errors, logs, config, interfaces) import only each
  other;
- abuse/ (the shared counters of the defences) imports only the base modules;
- core/ imports only the base modules and abuse/: no protocol, no app/, no store/;
- auth/, store/, delivery/ import the base modules and core/ (delivery/ not even core);
  queue/ may use store/ as well;
- the protocols (smtp, pop3, imap) import the base modules, core/, abuse/, and from auth/
  only auth.sasl, auth.realm and auth.sending_limits: never app/, store/, queue/,
  delivery/ or one another;
- senderauth/ (SPF, DKIM, DMARC, ARC, signing, SRS: the SMTP message hooks) imports the
  base modules, core/, store/ (the Junk folder) and delivery/ (the router's transaction
  it wraps): never a protocol, so the SMTP session sees it only as interfaces.IMessageHook
  and neither a protocol nor core/ may import it;
- admin/ (the operator's command) never imports a protocol or app/;
- http/ (the web side) imports the base modules and core/ only;
- nothing imports app/, and only app/ imports the listener modules (http's too).

Every package's __init__.py says in its docstring what it is in charge of and what it
may import ("May import:"); this test is what keeps those sentences true.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "mailserver"

#: mime7bit: 8-bit MIME made 7-bit, for the relay (a peer without 8BITMIME) and for
#: submission before DKIM signing: plain byte work that both layers need.
BASE = frozenset({"address", "reply", "errors", "logs", "config", "configdoc",
                  "config_checks", "config_example", "config_sections", "interfaces", "events", "mime7bit"})
PROTOCOLS = frozenset({"smtp", "pop3", "imap"})
#: What each layer may import besides itself (a package always imports its own modules).
ALLOWED: dict[str, frozenset[str]] = {
    **{name: BASE for name in BASE},
    "abuse": BASE,
    "core": BASE | {"abuse"},
    "auth": BASE | {"core", "abuse"},
    "store": BASE | {"core"},
    "delivery": BASE,
    "queue": BASE | {"core", "store"},
    "senderauth": BASE | {"core", "store", "delivery"},
    **{name: BASE | {"core", "auth", "abuse"} for name in PROTOCOLS},
    "admin": BASE | {"core", "auth", "store", "queue", "abuse", "senderauth", "http",
                     "api", "webhooks", "cluster"},
    "http": BASE | {"core"},
    #: The JSON API (/api/v1/) is a protocol like the others: interfaces and core only.
    "api": BASE | {"core", "auth", "abuse"},
    #: Webhook events: their spool and sender; the queue and store reach them only
    #: through interfaces.
    "webhooks": BASE | {"core"},
    #: Several nodes: the proxy protocols, the nginx auth endpoint, node health.
    "cluster": BASE | {"core", "auth", "abuse"},
    "app": BASE | {"core", "auth", "store", "queue", "delivery", "abuse", "http",
                   "senderauth", "api", "webhooks", "cluster"} | PROTOCOLS,
}
#: The only modules of auth/ a protocol may import: parsing SASL, the avatar, and the
#: users' sending limits (read by the submission session).
PROTOCOL_AUTH = frozenset({"mailserver.auth.sasl", "mailserver.auth.realm",
                           "mailserver.auth.sending_limits"})
LISTENERS = frozenset(f"mailserver.{p}.listener" for p in PROTOCOLS | {"http"})

#: Known violations, each (importing file, imported module), where the code is not yet
#: where the rule above says: none today (POP3 and IMAP open mail through
#: interfaces.IMailboxOpener). An entry whose import has gone fails
#: test_allow_list_is_not_stale, so the list cannot rot.
ALLOWED_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()


def layer_of(module: str) -> str:
    """"mailserver.smtp.server" -> "smtp"; "mailserver.config" -> "config"."""
    return module.split(".")[1]


def resolve(module: str, name: str) -> str:
    """`from module import name`: the submodule when `name` is one, else the module."""
    candidate = f"{module}.{name}"
    path = ROOT.parent.joinpath(*candidate.split("."))
    return candidate if path.with_suffix(".py").exists() or path.is_dir() else module


def imports_of(source: str) -> Iterator[str]:
    """Every mailserver module `source` imports, wherever the import statement is."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("mailserver."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "mailserver" or node.module.startswith("mailserver."):
                for alias in node.names:
                    yield resolve(node.module, alias.name)


def violations(relative: str, source: str) -> list[str]:
    """What is wrong with the imports of mailserver/`relative` (e.g. "smtp/server.py")."""
    parts = Path(relative).with_suffix("").parts
    layer = parts[0]
    problems = []
    for target in sorted(set(imports_of(source))):
        if target == "mailserver":
            continue
        other = layer_of(target)
        if target in LISTENERS and layer != "app":
            problems.append(f"{relative}: only app/ may import {target}")
        elif other == layer:
            continue
        elif other not in ALLOWED[layer]:
            problems.append(f"{relative}: {layer} may not import {target}")
        elif layer in PROTOCOLS and other == "auth" and not any(
                target == m or target.startswith(m + ".") for m in PROTOCOL_AUTH):
            problems.append(f"{relative}: a protocol may import only auth.sasl and "
                            f"auth.realm, not {target}")
    return [p for p in problems if (relative, p.rsplit(" ", 1)[-1]) not in ALLOWED_VIOLATIONS]


def source_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py"))


@pytest.mark.parametrize("relative", source_files())
def test_imports_follow_the_layers(relative: str) -> None:
    assert violations(relative, (ROOT / relative).read_text()) == []


def test_allow_list_is_not_stale() -> None:
    for relative, target in sorted(ALLOWED_VIOLATIONS):
        assert target in set(imports_of((ROOT / relative).read_text())), (
            f"{relative} no longer imports {target}: remove it from ALLOWED_VIOLATIONS")


@pytest.mark.parametrize("relative,source,problem", [
    ("smtp/reception.py", "from mailserver.app.service import make_service\n",
     "smtp/reception.py: smtp may not import mailserver.app.service"),
    ("smtp/server.py", "def f():\n    import mailserver.app\n",
     "smtp/server.py: smtp may not import mailserver.app"),
    ("smtp/server.py", "from mailserver import app\n",
     "smtp/server.py: smtp may not import mailserver.app"),
    ("imap/server.py", "from mailserver.store.maildir import ensure_maildir\n",
     "imap/server.py: imap may not import mailserver.store.maildir"),
    ("pop3/server.py", "from mailserver.smtp.grammar import parse_command\n",
     "pop3/server.py: pop3 may not import mailserver.smtp.grammar"),
    ("smtp/submission.py", "from mailserver.auth.directory import RecipientDirectory\n",
     "smtp/submission.py: a protocol may import only auth.sasl and auth.realm, not "
     "mailserver.auth.directory"),
    ("core/flow.py", "from mailserver.store.maildir import fsync_dir\n",
     "core/flow.py: core may not import mailserver.store.maildir"),
    ("queue/scheduler.py", "from mailserver.smtp.server import Envelope\n",
     "queue/scheduler.py: queue may not import mailserver.smtp.server"),
    ("store/delivery.py", "from mailserver.app import service\n",
     "store/delivery.py: store may not import mailserver.app.service"),
    ("queue/service.py", "from mailserver.smtp import listener\n",
     "queue/service.py: only app/ may import mailserver.smtp.listener"),
    ("smtp/server.py", "from mailserver.smtp.listener import POLICIES\n",
     "smtp/server.py: only app/ may import mailserver.smtp.listener"),
    ("auth/checker.py", "from mailserver.imap.grammar import parse\n",
     "auth/checker.py: auth may not import mailserver.imap.grammar"),
    ("http/site.py", "from mailserver.store.maildir import ensure_maildir\n",
     "http/site.py: http may not import mailserver.store.maildir"),
    ("smtp/server.py", "from mailserver.http.listener import make_listener\n",
     "smtp/server.py: only app/ may import mailserver.http.listener"),
    ("smtp/reception.py", "from mailserver.senderauth.transaction import InboundHook\n",
     "smtp/reception.py: smtp may not import mailserver.senderauth.transaction"),
    ("core/context.py", "from mailserver.senderauth.service import SenderAuth\n",
     "core/context.py: core may not import mailserver.senderauth.service"),
    ("queue/service.py", "from mailserver.senderauth.signing import Signer\n",
     "queue/service.py: queue may not import mailserver.senderauth.signing"),
    ("senderauth/transaction.py", "from mailserver.smtp.trace import address_literal\n",
     "senderauth/transaction.py: senderauth may not import mailserver.smtp.trace"),
])
def test_the_checker_catches(relative: str, source: str, problem: str) -> None:
    """The rules above are not vacuous: each forbidden import is reported."""
    assert violations(relative, source) == [problem]


def test_app_may_import_the_listeners() -> None:
    assert violations("app/service.py", "from mailserver.smtp import listener\n") == []


@pytest.mark.parametrize("package", sorted(
    str(p.parent.relative_to(ROOT)) for p in ROOT.rglob("*.py") if p.parent != ROOT))
def test_every_package_says_what_it_may_import(package: str) -> None:
    """A directory of modules without __init__.py is a namespace package, which
    setup.cfg's `packages = find:` leaves out of an installed server."""
    init = ROOT / package / "__init__.py"
    assert init.exists(), f"mailserver/{package} has no __init__.py"
    docstring = ast.get_docstring(ast.parse(init.read_text())) or ""
    assert "In charge of:" in docstring and "May import:" in docstring, package

"""`mailserver reload` and `mailserver status`: the running server, seen from outside.

`reload` sends SIGHUP to the pid in data_dir/run/server.lock (core/running.py: the lock
tells whether that pid is really our server) and waits for the server's verdict in
data_dir/run/reload.json (app/reload.py writes it), so a refused config is exit 1 with
the server's reasons, not a silent success.

`status` reads only files: listeners.json, the queue directory, the certificate that
serves, reload.json. It works whether or not a server runs, and never blocks on one.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from cryptography import x509

from mailserver.admin.commands import Admin, Refused
from mailserver.core.running import running_server

#: Seconds `reload` waits for the server to say whether it took the new config.
RELOAD_WAIT = 30.0
#: A certificate expiring sooner than this is a warning in `status`.
EXPIRY_WARNING_DAYS = 14
#: Where app/acme.py and app/tls.py keep the certificates (files, not imports: admin/
#: never imports app/).
ACME_CERTIFICATE = Path("acme") / "certificate.pem"
ACME_RENEW_FLAG = Path("acme") / "renew-now"
SELF_SIGNED = Path("tls") / "cert.pem"


def reload(admin: Admin, renew: bool = False) -> None:
    """Signal the running server to reload; wait for and print its verdict."""
    data_dir = admin.config.data_dir
    pid = running_server(data_dir / "run")
    if not pid:
        raise Refused(f"no server is running on {data_dir}")
    if renew:
        if not admin.config.acme.directory:
            raise Refused("--renew: no [acme] in the config")
        admin.writing()
        flag = data_dir / ACME_RENEW_FLAG
        flag.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        flag.touch()
    outcome_path = data_dir / "run" / "reload.json"
    asked = time.time()
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise Refused(f"the server (pid {pid}) has just ended") from None
    except PermissionError:
        raise Refused(f"not allowed to signal the server (pid {pid}): run this as "
                      "its user or root") from None
    deadline = time.monotonic() + RELOAD_WAIT
    while time.monotonic() < deadline:
        outcome = _read_json(outcome_path)
        if isinstance(outcome, dict) and outcome.get("time", 0) >= asked - 0.001:
            if not outcome.get("ok"):
                problems = outcome.get("problems") or ["(no reason given)"]
                raise Refused("refused; the previous config stays in force:\n  "
                              + "\n  ".join(str(p) for p in problems))
            admin.say(f"reloaded (pid {pid})"
                      + ("; certificate renewal requested" if renew else ""))
            return
        time.sleep(0.1)
    raise Refused(f"the server (pid {pid}) did not report within {RELOAD_WAIT:.0f} s; "
                  "see its log")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def status(admin: Admin) -> None:
    """What runs where, the queue, the certificate, the last reload, and warnings."""
    from mailserver.admin.checkconfig import _postmaster_warnings
    from mailserver.admin.queue_commands import _entries, _spool

    config = admin.config
    run_dir = config.data_dir / "run"
    warnings: list[str] = []
    pid = running_server(run_dir)
    if pid is None:
        admin.say(f"server: not running on {config.data_dir}")
    else:
        admin.say(f"server: running (pid {pid}) on {config.data_dir}")
        listeners = _read_json(run_dir / "listeners.json")
        for name, where in sorted((listeners or {}).items()):
            admin.say(f"  {name:<12} {where[0]}:{where[1]}")
    entries = _entries(_spool(admin))
    if entries:
        oldest = min(entry.created for entry, _ in entries)
        admin.say(f"queue: {len(entries)} messages, oldest queued "
                  f"{_utc(oldest)} ({_age(time.time() - oldest)} ago)")
    else:
        admin.say("queue: empty")
    warnings += _certificate(admin)
    outcome = _read_json(run_dir / "reload.json")
    if isinstance(outcome, dict) and "time" in outcome and outcome.get("pid") == pid:
        verdict = "in force" if outcome.get("ok") else "refused: " + "; ".join(
            str(p) for p in outcome.get("problems") or [])
        admin.say(f"last reload: {_utc(float(outcome['time']))}, {verdict}")
    else:
        admin.say("last reload: none since the server started")
    warnings += _postmaster_warnings(config, admin.directory)
    for warning in warnings:
        admin.say(f"warning: {warning}")


def _certificate(admin: Admin) -> list[str]:
    """Print the serving certificate's names and expiry; warnings for it."""
    config = admin.config
    if config.tls.certificate is not None:
        path, source = config.tls.certificate, "tls.certificate"
    elif config.acme.directory and (config.data_dir / ACME_CERTIFICATE).exists():
        path, source = config.data_dir / ACME_CERTIFICATE, "ACME"
    else:
        path, source = config.data_dir / SELF_SIGNED, "self-signed"
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as e:
        admin.say(f"certificate: cannot read {path}: {getattr(e, 'strerror', None) or e}")
        return [f"no readable certificate at {path}"] if source != "self-signed" else []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = ", ".join(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = cert.subject.rfc4514_string()
    expires = cert.not_valid_after_utc.timestamp()
    admin.say(f"certificate: {names} ({source}, {path}), expires {_utc(expires)}")
    warnings = []
    left = expires - time.time()
    if left < EXPIRY_WARNING_DAYS * 86400:
        what = "has expired" if left <= 0 else f"expires in {_age(left)}"
        warnings.append(f"the certificate {what} ({path})")
    if config.acme.directory and source == "self-signed":
        warnings.append("[acme] is configured but no ACME certificate was obtained yet; "
                        "the self-signed one serves (see the server's log)")
    return warnings


def _utc(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def _age(seconds: float) -> str:
    from mailserver.queue.envelope import age_text

    return age_text(seconds)

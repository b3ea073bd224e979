"""`mailserver check-config`: every problem at once, or a summary of what would run.

Why every problem at once: an operator fixing a config one error per run loses patience
and starts guessing. Errors name a key path (`limits.message_size: ...`) or a file and
line (`/etc/mailserver/users:7: ...`) so each can be found without reading code.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path
from typing import TextIO

from mailserver.auth.directory import RecipientDirectory
from mailserver.config import Config, load_config
from mailserver.core.ownfiles import user_name
from mailserver.errors import ConfigError
from mailserver.logs import logger

log = logger(__name__)


def check_config(path: str | None, stdout: TextIO, stderr: TextIO) -> int:
    """Exit status 0 with a summary on stdout, or 1 with every error on stderr."""
    try:
        config = load_config(path)
    except ConfigError as e:
        return _fail(list(e.problems), stderr)
    errors = _file_errors(config)
    directory = RecipientDirectory(config)
    report = directory.check()
    errors.extend(str(p) for p in report.errors)
    errors.extend(_token_errors(config))
    listen_errors, listen_warnings = _listen_problems(config)
    errors.extend(listen_errors)
    if errors:
        return _fail(errors, stderr)
    for warning in [*report.warnings, *listen_warnings]:
        print(f"warning: {warning}", file=stderr)
    for text in _postmaster_warnings(config, directory):
        print(f"warning: {text}", file=stderr)
    _summary(config, report.users, report.aliases, stdout)
    return 0


def _token_errors(config: Config) -> list[str]:
    """The API tokens file's bad lines (their tokens never work), and a file the server
    could not read or that others can (api/tokens.py keeps it 0600)."""
    from mailserver.api.tokens import TokensFile, tokens_path

    tokens = TokensFile(tokens_path(config))
    try:
        errors = [str(p) for p in tokens.table().problems]
        if tokens.read_error:
            errors.append(f"api.tokens_file: {tokens.read_error}")
        elif tokens.path.exists() and tokens.path.stat().st_mode & 0o007:
            errors.append(f"api.tokens_file: {tokens.path} is readable by every user "
                          "(chmod 600 it)")
    except OSError as e:  # a directory on the way we may not enter
        errors = [f"api.tokens_file: cannot read {tokens.path}: {e.strerror}"]
    return errors


def _postmaster_warnings(config: Config, directory: RecipientDirectory) -> list[str]:
    """RFC 5321 4.5.1: every domain must accept mail for postmaster; say where it doesn't.

    A warning, not an error: a fresh install with no users yet is not broken.
    """
    return [
        f"postmaster@{domain} reaches nobody (RFC 5321 4.5.1 requires it): "
        f"mailserver alias add postmaster@{domain} you@{domain}"
        for domain in config.domains.local
        if directory.resolve(f"postmaster@{domain}").is_empty
    ]


def _fail(errors: list[str], stderr: TextIO) -> int:
    for error in errors:
        print(error, file=stderr)
    print(f"check-config: {len(errors)} error{'s' if len(errors) != 1 else ''}",
          file=stderr)
    return 1


def _file_errors(config: Config) -> list[str]:
    """Files and directories the server will need but cannot use, as the user running
    this (run it as the server's user: `sudo -u mailserver mailserver check-config`,
    or systemd's ExecStartPre): a root admin command can leave root-owned files behind.
    (load_config checks that the certificate files can be read.)
    """
    errors: list[str] = []
    target = _existing_ancestor(config.data_dir)
    if config.data_dir.exists() and not config.data_dir.is_dir():
        errors.append(f"data_dir: {config.data_dir} is not a directory")
    elif not os.access(target, os.W_OK | os.X_OK):
        verb = f"is not writable {_as_whom(target)}" if target == config.data_dir else \
            f"cannot be created ({target} is not writable {_as_whom(target)})"
        errors.append(f"data_dir: {config.data_dir} {verb}")
    elif target == config.data_dir:
        errors.extend(_data_dir_errors(config))
    for key, file in (("auth.users_file", config.users_file),
                      ("auth.aliases_file", config.aliases_file)):
        if file.exists() and not os.access(file, os.R_OK):
            errors.append(f"{key}: cannot read {file} {_as_whom(file)}")
    return errors


#: Maildir problems listed one by one; past this, a count (10,000 root-owned Maildirs
#: are one mistake, not 10,000 lines).
_MAILDIR_LINES = 10


def _data_dir_errors(config: Config) -> list[str]:
    """data_dir's subdirectories and every Maildir in it: the server writes in each."""
    errors = [f"data_dir: cannot write in {path} {_as_whom(path)}"
              for path in (config.data_dir / name for name in ("mail", "queue", "run", "tls"))
              if path.is_dir() and not os.access(path, os.R_OK | os.W_OK | os.X_OK)]
    bad = []
    for maildir in _maildirs(config.mail_dir):
        for path in (maildir, maildir / "tmp", maildir / "new", maildir / "cur"):
            if path.is_dir() and not os.access(path, os.R_OK | os.W_OK | os.X_OK):
                bad.append(path)
                break
    errors.extend(f"data_dir: cannot write in Maildir {path} {_as_whom(path)}"
                  for path in bad[:_MAILDIR_LINES])
    if len(bad) > _MAILDIR_LINES:
        errors.append(f"data_dir: and {len(bad) - _MAILDIR_LINES} more Maildirs like these")
    return errors


def _maildirs(mail_dir: Path) -> list[Path]:
    """mail_dir/DOMAIN/LOCALPART directories we can list (one we cannot is reported)."""
    found: list[Path] = []
    for domain in _listdir(mail_dir):
        found.extend(mail_dir / domain / local for local in _listdir(mail_dir / domain))
    return found


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _as_whom(path: Path) -> str:
    """`(owner root, mode 0600; running as mailserver)`: what to chown, and for whom."""
    try:
        st = os.stat(path)
    except OSError:
        return f"(running as {user_name(os.geteuid())})"
    return (f"(owner {user_name(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o}; "
            f"running as {user_name(os.geteuid())})")


def _listen_problems(config: Config) -> tuple[list[str], list[str]]:
    """Listen addresses already in use, each in the server's own words (app/listeners).

    Skipped while a server runs on this data_dir (its own ports are in use, rightly). A
    low port refused to a user without CAP_NET_BIND_SERVICE is only a warning: systemd
    gives the server that capability (etc/mailserver.service), not this command.
    """
    from mailserver.core.running import running_server

    errors: list[str] = []
    warnings: list[str] = []
    try:
        running = running_server(config.data_dir / "run")
    except OSError:
        running = None
    if running is not None:
        return errors, warnings
    for name, description in config.listen.enabled().items():
        address = _tcp_address(description)
        if address is None:
            continue
        family, host, port = address
        probe = socket.socket(family, socket.SOCK_STREAM)
        try:
            # As Twisted's tcp.Port does, so TIME_WAIT leftovers are no conflict.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
        except OSError as e:
            why = (e.strerror or str(e)).lower()
            line = f"listen.{name}: cannot listen on {description}: {why}"
            if e.errno in (errno.EACCES, errno.EPERM) and port < 1024:
                warnings.append(f"{line} (as {user_name(os.geteuid())}; the server needs "
                                "root or CAP_NET_BIND_SERVICE)")
            else:
                errors.append(line)
        finally:
            probe.close()
    return errors, warnings


def _tcp_address(description: str) -> tuple[socket.AddressFamily, str, int] | None:
    """(family, host, port) a TCP (or TLS over TCP) endpoint would bind; None for other
    endpoint types and for port 0 (any free port)."""
    from twisted.internet import endpoints, reactor

    try:
        endpoint = endpoints.serverFromString(reactor, description)
    except Exception:  # noqa: BLE001 - load_config has reported a bad description
        return None
    port = getattr(endpoint, "_port", None)
    interface = getattr(endpoint, "_interface", None)
    if not isinstance(port, int) or not isinstance(interface, str) or port == 0:
        return None
    six = isinstance(endpoint, endpoints.TCP6ServerEndpoint) or ":" in interface
    return (socket.AF_INET6 if six else socket.AF_INET), interface, port


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _summary(config: Config, users: int, aliases: int, out: TextIO) -> None:
    def line(text: str) -> None:
        print(text, file=out)

    source = str(config.source.absolute()) if config.source else \
        "embedded default (no --config, no $MAILSERVER_CONFIG)"
    line(f"config:   {source}")
    line(f"hostname: {config.hostname}")
    line(f"data_dir: {config.data_dir}")
    if config.process_count > 1:
        line(f"processes: {config.process_count} (limits count per process)")
    line(f"domains:  {', '.join(config.domains.local) or '(none: every domain is remote)'}")
    enabled = config.listen.enabled()
    line("services:" if enabled else "services: (none)")
    for name, description in enabled.items():
        line(f"  {name:<12} {description}")
    if config.tls.certificate:
        line(f"tls:      {config.tls.certificate} (key {config.tls.private_key})")
    else:
        line(f"tls:      self-signed, made on first start under {config.data_dir / 'tls'}")
    line(f"users:    {users} in {config.users_file}")
    line(f"aliases:  {aliases} in {config.aliases_file}")
    line("check-config: ok")

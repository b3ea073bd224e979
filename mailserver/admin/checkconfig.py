"""`mailserver check-config`: every problem at once, or a summary of what would run.

Why every problem at once: an operator fixing a config one error per run loses patience
and starts guessing. Errors name a key path (`limits.message_size: ...`) or a file and
line (`/etc/mailserver/users:7: ...`) so each can be found without reading code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

from mailserver.auth.directory import RecipientDirectory
from mailserver.config import Config, load_config
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
    if errors:
        return _fail(errors, stderr)
    for warning in report.warnings:
        print(f"warning: {warning}", file=stderr)
    for text in _postmaster_warnings(config, directory):
        print(f"warning: {text}", file=stderr)
    _summary(config, report.users, report.aliases, stdout)
    return 0


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
    """Files and directories the server will need but cannot use."""
    errors: list[str] = []
    target = _existing_ancestor(config.data_dir)
    if config.data_dir.exists() and not config.data_dir.is_dir():
        errors.append(f"data_dir: {config.data_dir} is not a directory")
    elif not os.access(target, os.W_OK):
        verb = "is not writable" if target == config.data_dir else \
            f"cannot be created ({target} is not writable)"
        errors.append(f"data_dir: {config.data_dir} {verb}")
    for key, file in (("auth.users_file", config.users_file),
                      ("auth.aliases_file", config.aliases_file)):
        if file.exists() and not os.access(file, os.R_OK):
            errors.append(f"{key}: cannot read {file}")
    return errors


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

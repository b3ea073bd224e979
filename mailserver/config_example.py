"""The commented example config, etc/mailserver.toml, generated from config.py's
dataclasses and their field docs, so that the example can never drift from what the
code accepts (tests/config checks the file in the repository against it).

Kept out of config.py, which had grown past 800 lines; `python -m mailserver.config`
and config.render_example still give it.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from mailserver.config import Config, _join


def render_example() -> str:
    """The commented example config (etc/mailserver.toml) generated from the dataclasses."""
    example = {
        "hostname": '"mail.example.org"',
        "data_dir": '"/var/lib/mailserver"',
        "domains.local": '["example.org", "example.net"]',
        "listen.smtp": '"tcp:25"', "listen.submission": '"tcp:587"',
        "listen.submissions": '"tcp:465"', "listen.pop3": '"tcp:110"',
        "listen.pop3s": '"tcp:995"', "listen.imap": '"tcp:143"', "listen.imaps": '"tcp:993"',
        "listen.http": '"tcp:80"', "listen.https": '"tcp:443"',
        "http.metrics_networks": '["127.0.0.0/8", "::1/128"]',
        "tls.certificate": '"/etc/letsencrypt/live/mail.example.org/fullchain.pem"',
        "tls.private_key": '"/etc/letsencrypt/live/mail.example.org/privkey.pem"',
        "auth.users_file": '"/var/lib/mailserver/users"',
        "auth.aliases_file": '"/var/lib/mailserver/aliases"',
        "api.tokens_file": '"/var/lib/mailserver/api-tokens"',
        "acme.directory": '""',
        "acme.contact": '"mailto:postmaster@example.org"',
        "acme.names": '["mail.example.org", "mta-sts.example.org", "autoconfig.example.org"]',
        "cluster.mail_dir": '"/var/lib/mailserver/mail"',
        "cluster.cache_dir": '"/var/lib/mailserver/cache"',
    }
    out = ["# mailserver configuration (generated from mailserver/config.py: "
           "`python -m mailserver.config > etc/mailserver.toml`).",
           "# Every key is optional; the value shown is an example or the default.", ""]

    def emit(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            key = _join(prefix, f.name)
            if dataclasses.is_dataclass(f.type) or (
                isinstance(f.type, str) and f.type.endswith("Config")
            ):
                sub = typing.get_type_hints(cls)[f.name]
                out.append(f"[{key}]")
                if sub.__doc__ and not sub.__doc__.startswith(sub.__name__ + "("):
                    out.extend("# " + line.strip() for line in sub.__doc__.strip().splitlines()
                               if line.strip())
                emit(sub, key)
                out.append("")
                continue
            out.append(f"# {f.metadata.get('doc', '')}")
            if f.metadata.get("example"):  # an array of tables: shown, commented out
                out.extend("# " + line for line in f.metadata["example"].splitlines())
                continue
            out.append(f"{f.name} = {example.get(key) or _toml_default(f)}")

    emit(Config, "")
    first_table = next(i for i, line in enumerate(out) if line.startswith("["))
    out.insert(first_table, "")
    return "\n".join(out).rstrip() + "\n"


def _toml_default(f: dataclasses.Field[Any]) -> str:
    value = f.default
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:_}" if value >= 10_000 else str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    if f.default_factory is dict:
        return "{}"
    if isinstance(value, str):
        return f'"{value}"'
    return '""'

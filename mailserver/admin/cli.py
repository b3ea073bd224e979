"""`mailserver [--config PATH] COMMAND`: the operator's tool (see CONTRACT.md).

Exit codes are part of the contract, because scripts and the acceptance checks rely on
them: 0 done, 1 a refused request (one line on stderr saying why), 2 a usage error
(argparse). Whatever goes wrong, the operator gets a sentence, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from mailserver.admin import commands
from mailserver.admin.checkconfig import check_config
from mailserver.admin.commands import Admin, Refused
from mailserver.config import load_config
from mailserver.errors import ConfigError
from mailserver.logs import logger
from mailserver.store import sharedfs

log = logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each command group adds its own subcommands, in the
    order `mailserver --help` lists them."""
    parser = argparse.ArgumentParser(
        prog="mailserver",
        description="Manage the users, aliases, queue and lock-outs of the mail server.",
        epilog="Config: --config, else $MAILSERVER_CONFIG, else the embedded default. "
               "Exit status: 0 done, 1 refused (the reason is printed), 2 usage error.",
    )
    parser.add_argument("--config", metavar="PATH", help="the TOML config file")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_user_commands(top)
    _add_ban_commands(top)
    _add_alias_commands(top)
    _add_queue_commands(top)
    add_token_arguments(top)
    _add_webhook_commands(top)
    _add_server_commands(top)
    _add_sendmail_command(top)
    _add_import_commands(top)
    _add_doctor_command(top)
    _add_senderauth_commands(top)
    return parser


def _add_user_commands(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """user add|del|passwd|list|quota."""
    user = top.add_parser("user", help="add, delete, list users; change passwords")
    user_sub = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("add", "add a user (password from stdin, or asked twice)"),
                       ("del", "delete a user (the Maildir stays on disk)"),
                       ("passwd", "change a user's password")):
        action = user_sub.add_parser(name, help=text)
        action.add_argument("address", metavar="ADDRESS")
        if name != "del":
            action.add_argument("--weak-ok", action="store_true",
                                help="accept a password the strength check refuses")
    user_sub.add_parser("list", help="list the users")
    quota = user_sub.add_parser("quota", help="show (and set) a user's sending limits "
                                "and storage quota")
    quota.add_argument("address", metavar="ADDRESS")
    quota.add_argument("--messages-per-hour", type=int, metavar="N")
    quota.add_argument("--recipients-per-day", type=int, metavar="N")
    quota.add_argument("--storage", metavar="SIZE",
                       help="storage quota: 500M, 2G (k, M, G, T: 1024-based); 0: none")
    quota.add_argument("--messages", type=int, metavar="N",
                       help="most messages stored; 0: no limit")


def _add_ban_commands(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """ban list|add|del: the lock-outs of client addresses."""
    ban = top.add_parser("ban", help="list, add, delete lock-outs of client addresses")
    ban_sub = ban.add_subparsers(dest="action", required=True, metavar="ACTION")
    ban_sub.add_parser("list", help="list locked-out addresses")
    ban_add = ban_sub.add_parser("add", help="lock an address out")
    ban_add.add_argument("ip", metavar="ADDRESS")
    ban_add.add_argument("--seconds", type=int, help="default: abuse.lockout")
    ban_sub.add_parser("del", help="lift a lock-out").add_argument("ip", metavar="ADDRESS")


def _add_alias_commands(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """alias add|del|list."""
    alias = top.add_parser("alias", help="add, delete, list aliases")
    alias_sub = alias.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = alias_sub.add_parser("add", help="ADDRESS (or @DOMAIN for a catch-all) -> targets")
    add.add_argument("address", metavar="ADDRESS")
    add.add_argument("targets", metavar="TARGET[,TARGET...]", nargs="+")
    alias_sub.add_parser("del", help="delete an alias").add_argument("address",
                                                                      metavar="ADDRESS")
    alias_sub.add_parser("list", help="list the aliases")


def _add_queue_commands(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """queue list|show|flush|delete: the relay queue."""
    queue = top.add_parser("queue", help="inspect and manage the relay queue")
    queue_sub = queue.add_subparsers(dest="action", required=True, metavar="ACTION")
    queue_sub.add_parser("list", help="list queued messages")
    queue_sub.add_parser("show", help="show one queued message").add_argument("id",
                                                                             metavar="ID")
    queue_sub.add_parser("flush", help="retry every deferred message now")
    queue_sub.add_parser("delete", help="delete a queued message").add_argument(
        "id", metavar="ID")


def _add_webhook_commands(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """webhook list|show|retry: the webhook events."""
    webhook = top.add_parser("webhook", help="list, show and retry webhook events")
    webhook_sub = webhook.add_subparsers(dest="action", required=True, metavar="ACTION")
    which = webhook_sub.add_parser("list", help="pending and given-up events")
    only = which.add_mutually_exclusive_group()
    only.add_argument("--pending", dest="which", action="store_const", const="pending")
    only.add_argument("--failed", dest="which", action="store_const", const="failed")
    webhook_sub.add_parser("show", help="one event").add_argument("id", metavar="ID")
    again = webhook_sub.add_parser("retry", help="send given-up events again")
    target = again.add_mutually_exclusive_group(required=True)
    target.add_argument("id", metavar="ID", nargs="?")
    target.add_argument("--all-failed", action="store_true")


def _add_server_commands(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """check-config, reload, status and cluster status: the running server."""
    top.add_parser("check-config", help="check the config, users and aliases files")

    reload = top.add_parser("reload", help="make the running server re-read its config, "
                                           "certificates, users and aliases")
    reload.add_argument("--renew", action="store_true",
                        help="also renew the ACME certificate now")
    top.add_parser("status", help="what runs where, the queue, certificates, warnings")
    cluster = top.add_parser("cluster", help="the cluster's nodes as nginx's auth endpoint "
                             "sees them")
    cluster.add_subparsers(dest="action", required=True, metavar="ACTION").add_parser(
        "status", help="each node: address, up or down, since, last check")


def _add_sendmail_command(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """sendmail: the message on stdin, as Postfix's sendmail(1)."""
    sendmail = top.add_parser(
        "sendmail", help="send the message on stdin (as Postfix's sendmail(1))",
        description="Read a message on stdin and queue it for delivery, as cron and "
                    "scripts expect from sendmail(1). The sender is the local user.")
    add_sendmail_arguments(sendmail)


def _add_import_commands(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """import dovecot: mail from another server's Maildirs."""
    imp = top.add_parser("import", help="copy mail from another server's Maildirs")
    imp_sub = imp.add_subparsers(dest="action", required=True, metavar="SOURCE")
    dovecot = imp_sub.add_parser(
        "dovecot", help="Dovecot Maildirs, with UIDs, flags, keywords, subscriptions")
    dovecot.add_argument("--from", dest="source", metavar="PATH", required=True,
                         help="the user's Maildir (--user), or the DOMAIN/USER tree (--all)")
    who = dovecot.add_mutually_exclusive_group()
    who.add_argument("--user", metavar="ADDRESS", help="import PATH as this user's mail")
    who.add_argument("--all", action="store_true",
                     help="import PATH/DOMAIN/LOCALPART for every known user (the default)")
    dovecot.add_argument("--dry-run", action="store_true",
                         help="say what would be imported, change nothing")


def _add_doctor_command(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """doctor: the Maildirs against their UID lists."""
    doc = top.add_parser("doctor", help="check the Maildirs against their UID lists")
    doc.add_argument("--user", metavar="ADDRESS", help="only this user's Maildir")


def _add_senderauth_commands(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """dns-records and dkim list|rotate|activate|forget."""
    records = top.add_parser("dns-records", help="print (or --check) the DNS records a "
                             "local domain needs: MX, SPF, DKIM, DMARC, PTR")
    records.add_argument("--check", action="store_true",
                         help="ask the configured resolver; exit 1 if anything is missing")
    records.add_argument("domain", metavar="DOMAIN")
    dkim = top.add_parser("dkim", help="list and rotate DKIM keys")
    dkim_sub = dkim.add_subparsers(dest="action", required=True, metavar="ACTION")
    dkim_sub.add_parser("list", help="every domain's selectors and their state")
    dkim_sub.add_parser("rotate", help="make new (pending) keys").add_argument(
        "domain", metavar="DOMAIN")
    activate = dkim_sub.add_parser("activate", help="sign with the pending keys, once "
                                   "their records are published")
    activate.add_argument("--force", action="store_true", help="skip the DNS check")
    activate.add_argument("domain", metavar="DOMAIN")
    forget = dkim_sub.add_parser("forget", help="drop a retired selector")
    forget.add_argument("domain", metavar="DOMAIN")
    forget.add_argument("selector", metavar="SELECTOR")


def add_token_arguments(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = top.add_parser("token", help="add, list, revoke the HTTP API's tokens")
    token_sub = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = token_sub.add_parser("add", help="make a token for a user (printed once)")
    add.add_argument("address", metavar="ADDRESS")
    add.add_argument("--scope", choices=("send", "read", "all"), default="all",
                     help="what the token may do (default: all)")
    add.add_argument("--expires", type=int, metavar="DAYS", help="default: never")
    add.add_argument("--name", default="", metavar="LABEL", help="what the token is for")
    token_sub.add_parser("list", help="list tokens (never their secrets)").add_argument(
        "address", metavar="ADDRESS", nargs="?")
    token_sub.add_parser("del", help="revoke a token, or every token of an address"
                         ).add_argument("which", metavar="ID|ADDRESS")


def add_sendmail_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", dest="sender", metavar="SENDER",
                        help="envelope sender (default: your login@hostname; '' is <>)")
    parser.add_argument("-t", dest="from_headers", action="store_true",
                        help="recipients from the To, Cc and Bcc headers (Bcc removed)")
    parser.add_argument("-i", "-oi", dest="ignore_dots", action="store_true",
                        help="a line holding a single dot is data, not the end of the message")
    parser.add_argument("-F", dest="full_name", metavar="NAME",
                        help="the sender's full name, for a From header we add")
    # What cron and other callers pass and Postfix's sendmail ignores as well.
    for ignored in ("-oem", "-odi", "-odb"):
        parser.add_argument(ignored, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-B", dest="body_type", help=argparse.SUPPRESS)
    parser.add_argument("recipients", metavar="RCPT", nargs="*")


def _handler(args: argparse.Namespace) -> Callable[[Admin], None]:
    """What carries out the parsed command: one handler per command group, each importing
    the module of its commands when it runs."""
    if args.command in ("reload", "status"):
        from mailserver.admin import server_commands as s

        if args.command == "status":
            return s.status
        return lambda admin: s.reload(admin, renew=args.renew)
    if args.command == "sendmail":
        from mailserver.admin import sendmail

        return lambda admin: sendmail.sendmail(admin, args)
    if args.command == "cluster":
        from mailserver.admin.cluster_commands import cluster_status

        return cluster_status
    if args.command == "import":
        from pathlib import Path

        from mailserver.admin.dovecot_import import import_dovecot

        return lambda admin: import_dovecot(admin, Path(args.source).absolute(), args.user,
                                            args.user is None, args.dry_run)
    if args.command in ("dns-records", "dkim"):
        return _senderauth_handler(args)
    if args.command == "token":
        return _token_handler(args)
    if args.command == "webhook":
        return _webhook_handler(args)
    if args.command == "queue":
        return _queue_handler(args)
    if args.command == "ban" or args.action == "quota":
        return _abuse_handler(args)
    return _user_or_alias_handler(args)


def _token_handler(args: argparse.Namespace) -> Callable[[Admin], None]:
    from mailserver.admin import token_commands as t

    if args.action == "add":
        return lambda admin: t.token_add(admin, args.address, args.scope, args.expires,
                                         args.name)
    if args.action == "list":
        return lambda admin: t.token_list(admin, args.address)
    return lambda admin: t.token_del(admin, args.which)


def _webhook_handler(args: argparse.Namespace) -> Callable[[Admin], None]:
    from mailserver.admin import webhook_commands as w

    if args.action == "list":
        return lambda admin: w.webhook_list(admin, args.which)
    if args.action == "show":
        return lambda admin: w.webhook_show(admin, args.id)
    return lambda admin: w.webhook_retry(admin, None if args.all_failed else args.id)


def _queue_handler(args: argparse.Namespace) -> Callable[[Admin], None]:
    from mailserver.admin import queue_commands as q

    if args.action in ("show", "delete"):
        by_id = q.queue_show if args.action == "show" else q.queue_delete
        return lambda admin: by_id(admin, args.id)
    return q.queue_list if args.action == "list" else q.queue_flush


def _abuse_handler(args: argparse.Namespace) -> Callable[[Admin], None]:
    """ban list|add|del, and user quota (abuse_commands.py has both)."""
    from mailserver.admin import abuse_commands as a

    if args.action == "quota":
        return lambda admin: a.user_quota(admin, args.address, args.messages_per_hour,
                                          args.recipients_per_day, args.storage,
                                          args.messages)
    if args.action == "list":
        return a.ban_list
    if args.action == "add":
        return lambda admin: a.ban_add(admin, args.ip, args.seconds)
    return lambda admin: a.ban_del(admin, args.ip)


def _user_or_alias_handler(args: argparse.Namespace) -> Callable[[Admin], None]:
    if args.command == "user":
        if args.action == "list":
            return commands.user_list
        if args.action == "del":
            return lambda admin: commands.user_del(admin, args.address)
        action = {"add": commands.user_add, "passwd": commands.user_passwd}[args.action]
        return lambda admin: action(admin, args.address, weak_ok=args.weak_ok)
    if args.action == "add":
        return lambda admin: commands.alias_add(admin, args.address, args.targets)
    if args.action == "del":
        return lambda admin: commands.alias_del(admin, args.address)
    return commands.alias_list


def _senderauth_handler(args: argparse.Namespace) -> Callable[[Admin], None]:
    from mailserver.admin import dns_records as d

    if args.command == "dns-records":
        return lambda admin: d.dns_records(admin, args.domain, args.check)
    if args.action == "list":
        return d.dkim_list
    if args.action == "rotate":
        return lambda admin: d.dkim_rotate(admin, args.domain)
    if args.action == "activate":
        return lambda admin: d.dkim_activate(admin, args.domain, args.force)
    return lambda admin: d.dkim_forget(admin, args.domain, args.selector)


def main(argv: list[str] | None = None) -> int:
    """Run one admin command; returns the exit status (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage error (2) or --help (0)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if args.command == "check-config":
        return check_config(args.config, sys.stdout, sys.stderr)
    # "user add", "dns-records example.org", "doctor", "status"
    label = " ".join(filter(None, (args.command, getattr(args, "action", None)
                                   or getattr(args, "domain", None))))
    try:
        config = load_config(args.config)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        if args.command == "reload":
            print("reload: not sent; the running server keeps its config", file=sys.stderr)
        return 1
    sharedfs.configure_from(config)  # the store's locks as the server takes them (0039)
    admin = Admin(config, sys.stdin, sys.stdout, sys.stderr)
    try:
        if args.command == "doctor":
            from mailserver.admin.doctor import doctor

            return 0 if doctor(admin, args.user) else 1
        _handler(args)(admin)
    except Refused as e:
        print(f"{label}: {e}", file=sys.stderr)
        return 1
    except (EOFError, KeyboardInterrupt):
        print(f"{label}: interrupted", file=sys.stderr)
        return 1
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        print(f"{label}: cannot use{where}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The rules of message submission (RFC 6409) that do not depend on the protocol: who
may be the envelope sender and the From field, and the user's sending limits.

Two front doors submit our users' mail: the SMTP submission session
(smtp/submission.py, smtp/defences.py) and the JSON API's POST /api/v1/send (api/send.py).
Both ask these functions, so a rule and its reply text have one home and the API's
refusals carry the reason SMTP would give. Each returns the Reply refusing, or None;
the caller logs and answers it in its own protocol. Why each rule is what it is:
smtp/submission.py's module docstring.
"""

from __future__ import annotations

from mailserver.abuse.control import AbuseControl
from mailserver.core.headers import BadFromField, HeaderInspector, from_addresses
from mailserver.interfaces import IRecipientDirectory
from mailserver.reply import Reply


def sender_refusal(senders: IRecipientDirectory | None, user: str | None,
                   sender: str) -> Reply | None:
    """RFC 6409 6.1: the envelope sender must be one `user` may send as; the null
    sender ("") never is (553 5.7.1, RFC 3463 X.7.1)."""
    if user is None or senders is None or not sender or not senders.may_send_as(user,
                                                                               sender):
        return Reply(553, "5.7.1", f"<{sender}>: Sender address rejected: not owned by "
                                   f"user {user or '(none)'}")
    return None


def from_refusal(senders: IRecipientDirectory | None, user: str | None,
                 headers: HeaderInspector) -> Reply | None:
    """RFC 6409 6.1 / 8: every address of the From field must be one `user` may send
    as; two From fields, one we cannot parse and a header section too long to have
    been seen whole are refused too (550 5.7.1). No From at all is accepted."""
    fields = headers.from_fields
    if headers.gave_up:
        why = "Error: header section too long to check the From header"
    elif not fields:
        return None
    elif len(fields) > 1:
        why = f"Error: {len(fields)} From header fields; RFC 5322 3.6 allows one"
    else:
        try:
            addresses = from_addresses(fields[0])
        except BadFromField as e:
            why = f"Error: From header {e}"
        else:
            refused = [a for a in addresses if user is None or senders is None
                       or not senders.may_send_as(user, a)]
            if not refused:
                return None
            why = (f"<{refused[0]}>: From header address rejected: not owned by "
                   f"user {user or '(none)'}")
    return Reply(550, "5.7.1", why)


def message_limit_refusal(abuse: AbuseControl | None, user: str,
                          per_hour: int) -> Reply | None:
    """Count one message of `user` against its hourly limit (0: none), or refuse it
    with 451 4.7.1: temporary, the client retries later. Reserved atomically across
    processes (abuse/control.py), so parallel clients cannot together pass it."""
    if abuse is None or abuse.reserve_message(user, per_hour):
        return None
    return Reply(451, "4.7.1", "Error: hourly sending limit reached; try again later")


def recipient_limit_refusal(abuse: AbuseControl | None, user: str,
                            per_day: int) -> Reply | None:
    """Count one recipient against `user`'s daily limit (0: none), or refuse it with
    550 5.7.1: a hard cap, that recipient must not be retried today."""
    if abuse is None or abuse.reserve_recipient(user, per_day):
        return None
    return Reply(550, "5.7.1", "Error: daily recipient limit reached")

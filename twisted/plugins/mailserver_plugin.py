"""twistd plugin: `twistd mailserver`. Imports the application only when it is used."""

from twisted.application.service import ServiceMaker

mailserver = ServiceMaker(
    "mailserver",
    "mailserver.app.plugin",
    "SMTP, submission, POP3 and IMAP over one Maildir store",
    "mailserver",
)

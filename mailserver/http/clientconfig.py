"""What a mail client needs to set itself up, in the three forms clients fetch.

- Thunderbird autoconfig, config-v1.1.xml (the format of
  https://wiki.mozilla.org/Thunderbird:Autoconfiguration:ConfigFileFormat, as Thunderbird's
  own parser reads it: emailProvider, incomingServer/outgoingServer with hostname, port,
  socketType, username, authentication);
- Microsoft Autodiscover, the POX form ("Plain Old XML", [MS-OXDSCLI] 2.2.4: the
  outlook/responseschema/2006a response with one Protocol per service);
- an Apple configuration profile (.mobileconfig: a property list whose payload is a
  com.apple.mail.managed account).

Each describes exactly the listeners that are configured and listening, with the server's
hostname: implicit TLS first (RFC 8314 3: preferred over STARTTLS), the plain-text port
with STARTTLS after it; never port 25 (that is for MX traffic, not for clients). Every
value a client sent (the address) goes into the document through an XML or plist
serializer, never by string pasting, so metacharacters come out escaped.
"""

from __future__ import annotations

import plistlib
import uuid
from dataclasses import dataclass
from xml.etree import ElementTree as ET

#: Listener name -> (protocol, how TLS starts), in the order clients should try them.
ADVERTISED = (
    ("imaps", "imap", "SSL"), ("imap", "imap", "STARTTLS"),
    ("pop3s", "pop3", "SSL"), ("pop3", "pop3", "STARTTLS"),
    ("submissions", "smtp", "SSL"), ("submission", "smtp", "STARTTLS"),
)

AUTODISCOVER_RESPONSE = ("http://schemas.microsoft.com/exchange/autodiscover/outlook/"
                         "responseschema/2006a")
AUTODISCOVER_ROOT = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
AUTODISCOVER_REQUEST = ("http://schemas.microsoft.com/exchange/autodiscover/outlook/"
                        "requestschema/2006")


@dataclass(frozen=True)
class Endpoint:
    protocol: str  # imap, pop3, smtp
    port: int
    socket_type: str  # SSL (implicit TLS) or STARTTLS


def endpoints(listening: dict[str, int]) -> list[Endpoint]:
    """The client-facing listeners among `listening` (name -> port), best first."""
    return [Endpoint(protocol, listening[name], socket_type)
            for name, protocol, socket_type in ADVERTISED if name in listening]


def _xml(root: ET.Element) -> bytes:
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    child = ET.SubElement(parent, tag)
    child.text = text
    return child


def thunderbird(domain: str, hostname: str, listening: dict[str, int]) -> bytes:
    """config-v1.1.xml for `domain`: the username is the whole address (%EMAILADDRESS%).

    LookupError without an incoming or without an outgoing server: Thunderbird's
    readFromXML throws on such a file ("need proper <incomingServer>"), so we have none.
    """
    described = endpoints(listening)
    if {e.protocol == "smtp" for e in described} != {True, False}:
        raise LookupError("no incoming or no outgoing listener to describe")
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    _text(provider, "domain", domain)
    _text(provider, "displayName", domain)
    _text(provider, "displayShortName", domain)
    for e in described:
        tag = "outgoingServer" if e.protocol == "smtp" else "incomingServer"
        server = ET.SubElement(provider, tag, type=e.protocol)
        _text(server, "hostname", hostname)
        _text(server, "port", str(e.port))
        _text(server, "socketType", e.socket_type)
        _text(server, "username", "%EMAILADDRESS%")
        _text(server, "authentication", "password-cleartext")
    return _xml(root)


class BadRequest(ValueError):
    """The client's request cannot be answered; the message says why (for a 400)."""


def autodiscover_address(body: bytes) -> str:
    """The EMailAddress of a POX Autodiscover request; BadRequest otherwise.

    A document type declaration is refused outright: the request never needs one, and
    refusing it shuts out entity expansion ("billion laughs") and external entities
    whatever the XML parser would do with them.
    """
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise BadRequest("no DOCTYPE allowed")
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise BadRequest("not XML") from None
    found = root.find(f"{{{AUTODISCOVER_REQUEST}}}Request/{{{AUTODISCOVER_REQUEST}}}EMailAddress")
    if found is None:  # some clients send it without the namespace
        found = root.find("Request/EMailAddress")
    if found is None or not (found.text or "").strip():
        raise BadRequest("no Request/EMailAddress")
    return (found.text or "").strip()


def autodiscover(address: str, hostname: str, listening: dict[str, int]) -> bytes:
    """The POX response: one Protocol per endpoint; Encryption SSL (implicit) or TLS
    (STARTTLS), as Outlook reads them."""
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_ROOT)
    response = ET.SubElement(root, "Response", xmlns=AUTODISCOVER_RESPONSE)
    account = ET.SubElement(response, "Account")
    _text(account, "AccountType", "email")
    _text(account, "Action", "settings")
    for e in endpoints(listening):
        protocol = ET.SubElement(account, "Protocol")
        _text(protocol, "Type", e.protocol.upper())
        _text(protocol, "Server", hostname)
        _text(protocol, "Port", str(e.port))
        _text(protocol, "LoginName", address)
        _text(protocol, "DomainRequired", "off")
        _text(protocol, "SPA", "off")
        _text(protocol, "SSL", "on")
        _text(protocol, "Encryption", "SSL" if e.socket_type == "SSL" else "TLS")
        _text(protocol, "AuthRequired", "on")
    return _xml(root)


def mobileconfig(address: str, hostname: str, listening: dict[str, int]) -> bytes:
    """An unsigned configuration profile with one mail account: IMAP if we serve it,
    else POP3; submission for sending. The UUIDs derive from the address and host, so
    installing the profile again replaces the account instead of adding a second."""
    chosen = endpoints(listening)
    incoming = next((e for e in chosen if e.protocol == "imap"), None) or next(
        (e for e in chosen if e.protocol == "pop3"), None)
    outgoing = next((e for e in chosen if e.protocol == "smtp"), None)
    if incoming is None or outgoing is None:
        raise LookupError("no incoming or no outgoing listener to describe")
    domain = address.rpartition("@")[2]
    reverse = ".".join(reversed(hostname.split(".")))
    account: dict[str, object] = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{reverse}.mail.account",
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"mail:{hostname}:{address}")).upper(),
        "PayloadDisplayName": address,
        "EmailAccountDescription": address,
        "EmailAccountType": "EmailTypeIMAP" if incoming.protocol == "imap" else "EmailTypePOP",
        "EmailAddress": address,
        "IncomingMailServerHostName": hostname,
        "IncomingMailServerPortNumber": incoming.port,
        "IncomingMailServerUseSSL": incoming.socket_type == "SSL",
        "IncomingMailServerUsername": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": hostname,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": outgoing.socket_type == "SSL",
        "OutgoingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{reverse}.mail",
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"profile:{hostname}:{address}")).upper(),
        "PayloadDisplayName": f"Mail for {address}",
        "PayloadDescription": f"Sets up {address} on {hostname} ({domain}).",
        "PayloadContent": [account],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)

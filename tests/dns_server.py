"""A tiny authoritative DNS server (twisted.names) on 127.0.0.1, for the relay tests.

Run as a subprocess so that tests of any kind (plain pytest, trial, integration) can use
it: `DNSServer(zone).start()` writes the zone to a JSON file, starts
`python tests/dns_server.py ZONE.json`, and reads the UDP port it prints.

Zone: {"name": {"MX": [[10, "mx.example.net"]], "A": ["127.0.0.3"], "AAAA": [...],
"TXT": ["v=spf1 -all", ["first 255 octets", "rest"]], "PTR": ["host.example.net"],
"SRV": [[0, 1, 993, "mx.example.net"]], "CNAME": ["mx.example.net"]}}
(a TXT record is one string, or a list of its character-strings, RFC 1035 3.3.14;
a longer string is cut into 255-octet pieces). UDP and TCP on the same port, so
answers too big for UDP are fetched again over TCP as a resolver does.
A name that is not in the zone is NXDOMAIN; a name without records of the asked type
answers NOERROR with no answer (what dnspython calls NoAnswer). "TTL": 5 sets the
TTL of the name's records (default 60). Special keys:
"SERVFAIL": true answers SERVFAIL; "TIMEOUT": true never answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ZONE = dict[str, dict[str, Any]]


class DNSServer:
    def __init__(self, zone: ZONE) -> None:
        self.zone = zone
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self._dir = tempfile.TemporaryDirectory(prefix="dns-")

    @property
    def nameserver(self) -> str:
        """The relay.nameservers entry for this server."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> DNSServer:
        path = Path(self._dir.name) / "zone.json"
        path.write_text(json.dumps(self.zone))
        self.proc = subprocess.Popen([sys.executable, __file__, str(path)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise AssertionError(f"DNS server did not start: {line!r}")
        self.port = int(line)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
        self._dir.cleanup()

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serve(zone_path: str) -> None:
    from twisted.internet import defer, reactor
    from twisted.names import dns, error, server
    from twisted.python import log

    log.startLogging(open('/dev/null', 'w'), setStdout=False)
    from twisted.names.common import ResolverBase

    zone: ZONE = {k.lower().rstrip("."): v for k, v in
                  json.loads(Path(zone_path).read_text()).items()}

    class ZoneResolver(ResolverBase):
        def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Any:
            key = name.decode().lower().rstrip(".")
            records = zone.get(key)
            if records is None:
                return defer.fail(error.AuthoritativeDomainError(name))
            if records.get("TIMEOUT"):
                return defer.Deferred()  # never answered
            if records.get("SERVFAIL"):
                return defer.fail(RuntimeError("SERVFAIL asked for"))  # -> SERVFAIL
            answers = []
            ttl = records.get("TTL", 60)
            if type in (dns.MX, dns.ALL_RECORDS):
                for pref, host in records.get("MX", []):
                    exchange = b"" if host == "." else host.encode()  # "." = the root
                    answers.append(dns.RRHeader(name, dns.MX, ttl=ttl, auth=True,
                                                payload=dns.Record_MX(pref, exchange)))
            if type in (dns.A, dns.ALL_RECORDS):
                for a in records.get("A", []):
                    answers.append(dns.RRHeader(name, dns.A, ttl=ttl, auth=True,
                                                payload=dns.Record_A(a)))
            if type in (dns.AAAA, dns.ALL_RECORDS):
                for a in records.get("AAAA", []):
                    answers.append(dns.RRHeader(name, dns.AAAA, ttl=ttl, auth=True,
                                                payload=dns.Record_AAAA(a)))
            if type in (dns.TXT, dns.ALL_RECORDS):
                for txt in records.get("TXT", []):
                    answers.append(dns.RRHeader(name, dns.TXT, ttl=ttl, auth=True,
                                                payload=dns.Record_TXT(*_strings(txt))))
            if type in (dns.PTR, dns.ALL_RECORDS):
                for host in records.get("PTR", []):
                    answers.append(dns.RRHeader(name, dns.PTR, ttl=ttl, auth=True,
                                                payload=dns.Record_PTR(host.encode())))
            if type in (dns.SRV, dns.ALL_RECORDS):
                for priority, weight, srv_port, target in records.get("SRV", []):
                    target = b"" if target == "." else target.encode()  # "." = the root
                    answers.append(dns.RRHeader(name, dns.SRV, ttl=ttl, auth=True,
                                                payload=dns.Record_SRV(priority, weight,
                                                                       srv_port, target)))
            if type in (dns.CNAME, dns.ALL_RECORDS):
                for host in records.get("CNAME", []):
                    answers.append(dns.RRHeader(name, dns.CNAME, ttl=ttl, auth=True,
                                                payload=dns.Record_CNAME(host.encode())))
            return defer.succeed((answers, [], []))

    factory = server.DNSServerFactory(authorities=[ZoneResolver()])
    protocol = dns.DNSDatagramProtocol(factory)
    from twisted.internet.error import CannotListenError

    # TCP takes a free port; UDP must then bind the same number, which a UDP socket of
    # some other program (any resolver's query, from the ephemeral range) may hold: try
    # another port then, rather than fail the test that needed this server.
    for _ in range(50):
        tcp = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        try:
            port = reactor.listenUDP(tcp.getHost().port, protocol,  # type: ignore[attr-defined]
                                     interface="127.0.0.1")
            break
        except CannotListenError:
            tcp.stopListening()
    else:
        raise SystemExit("no port free for both TCP and UDP")
    print(port.getHost().port, flush=True)
    reactor.run()  # type: ignore[attr-defined]


def _strings(txt: str | list[str]) -> list[bytes]:
    """A TXT record's character-strings: a list as given, a string cut every 255."""
    if isinstance(txt, list):
        return [t.encode() for t in txt]
    data = txt.encode()
    return [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]


if __name__ == "__main__":
    _serve(sys.argv[1])

"""A validating resolver on loopback with zones signed here: Debian's unbound serving
test zones as auth-zones (for-upstream, so its validator checks them as if fetched)
with a local trust anchor, so the AD bit our code reads is real (RFC 4035 3.2.3).

    with ValidatingResolver(tmp_path, {"dane.test": SIGNED_RECORDS},
                            unsigned={"plain.test": ...}, bogus={"bogus.test": ...}) as r:
        r.nameserver  # "127.0.0.1:PORT" for dns.nameservers

- signed zones: signed with ldns-signzone by a key made with ldns-keygen; their DS is
  the trust anchor: answers come with AD.
- unsigned zones: no anchor covers them: answers come without AD (insecure).
- bogus zones: signed, but the anchor is another key's DS: the validator answers
  SERVFAIL, as for forged data.

Records are zone-file lines relative to the zone ("mx IN A 127.0.0.1"); SOA and NS are
added. Needs `unbound` and `ldnsutils` (the Makefile's `tools` installs them).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import dns.flags
import dns.resolver
from ports import free_port as _free_udp_port

UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"


class ValidatingResolver:
    def __init__(self, root: Path, signed: Mapping[str, Sequence[str]],
                 unsigned: Mapping[str, Sequence[str]] | None = None,
                 bogus: Mapping[str, Sequence[str]] | None = None) -> None:
        self.root = root
        self.zones = {"signed": dict(signed), "unsigned": dict(unsigned or {}),
                      "bogus": dict(bogus or {})}
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _zone_file(self, zone: str, records: Sequence[str]) -> Path:
        path = self.root / f"{zone}.zone"
        path.write_text(
            f"$ORIGIN {zone}.\n$TTL 300\n"
            f"@ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 300\n"
            f"@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n" + "".join(r + "\n" for r in records))
        return path

    def _keygen(self, zone: str) -> str:
        """A new ECDSA P-256 key for `zone` (files K<zone>+013+<tag>.{key,private,ds})."""
        return subprocess.run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", zone],
                              cwd=self.root, capture_output=True, text=True, check=True
                              ).stdout.strip()

    def _sign(self, path: Path, key: str) -> Path:
        subprocess.run(["ldns-signzone", "-n", str(path), key], cwd=self.root,
                       capture_output=True, check=True)
        return path.with_name(path.name + ".signed")

    def start(self) -> ValidatingResolver:
        self.root.mkdir(parents=True, exist_ok=True)
        anchors: list[Path] = []
        auth: list[tuple[str, Path]] = []
        for kind, zones in self.zones.items():
            for zone, records in zones.items():
                path = self._zone_file(zone, records)
                if kind == "unsigned":
                    auth.append((zone, path))
                    continue
                key = self._keygen(zone)
                auth.append((zone, self._sign(path, key)))
                # bogus: the anchor is another key's DS, so validation fails.
                anchor = self._keygen(zone) if kind == "bogus" else key
                anchors.append(self.root / f"{anchor}.ds")
        self.port = _free_udp_port()
        lines = [
            "server:", "  interface: 127.0.0.1", f"  port: {self.port}",
            "  do-daemonize: no", '  chroot: ""', '  username: ""',
            f'  directory: "{self.root}"', "  use-syslog: no",
            f'  logfile: "{self.root / "unbound.log"}"', '  pidfile: ""', "  verbosity: 1",
            '  module-config: "validator iterator"', "  do-not-query-localhost: no",
            "  val-log-level: 2", "  do-tcp: yes",
            # RFC 6761 names unbound answers itself by default: ours to serve here.
            '  local-zone: "test." nodefault',
        ]
        lines += [f'  trust-anchor-file: "{ds}"' for ds in anchors]
        for zone, path in auth:
            lines += ["auth-zone:", f'  name: "{zone}."', f'  zonefile: "{path}"',
                      "  for-upstream: yes", "  for-downstream: no",
                      "  fallback-enabled: no"]
        config = self.root / "unbound.conf"
        config.write_text("\n".join(lines) + "\n")
        subprocess.run([UNBOUND.replace("unbound", "unbound-checkconf"), str(config)],
                       capture_output=True, check=True)
        self.proc = subprocess.Popen([UNBOUND, "-d", "-c", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.port
        resolver.lifetime = 1.0
        deadline = time.monotonic() + 60
        zone = next(iter(self.zones["signed"] or self.zones["unsigned"]))
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.stderr else b""
                raise RuntimeError(f"unbound exited: {err.decode(errors='replace')}")
            try:
                resolver.resolve(f"ns.{zone}.", "A")
                return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError(f"unbound did not answer on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stderr is not None:
                self.proc.stderr.close()
            self.proc = None

    def __enter__(self) -> ValidatingResolver:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def ad_bit(nameserver: str, name: str, rdtype: str) -> bool:
    """Whether the resolver marks its answer authenticated (for the fixture's own test)."""
    host, port = nameserver.rsplit(":", 1)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = int(port)
    resolver.flags = dns.flags.RD | dns.flags.AD
    answer = resolver.resolve(name, rdtype)
    return bool(answer.response.flags & dns.flags.AD)

"""Moving from Dovecot: a big INBOX as Dovecot left it, taken over in place and imported,
beside Dovecot's own `doveadm force-resync` of the same tree, in one run.

1. N messages (2 KiB, Dovecot-style names with S= and W=, in cur/ with flags) are
   written once.
2. Dovecot (a throw-away instance, bench/dovecot_instance.py) indexes them:
   `doveadm force-resync -u bob INBOX` with no dovecot-uidlist and no index, which is
   Dovecot's own first open of a Maildir it has not seen; timed `--repeat` times (its
   files removed before each), the last run's dovecot-uidlist kept for step 3.
3. Ours in place: a fresh process opens the folder (UserStore.select("INBOX")) with
   Dovecot's uidlist there and none of ours: the takeover, the listing and the index.
   Our files are removed before each repeat.
4. Ours by copy: `mailserver import dovecot --from TREE --user bob@example.org` into an
   empty data_dir (hard links), each repeat into a new one.

Wall time (median) and the largest RSS of the process that did the work (wait4's
ru_maxrss; Dovecot's doveadm does the resync itself, in-process).

    .venv/bin/python bench/dovecot_takeover.py             # 100,000 messages
    .venv/bin/python bench/dovecot_takeover.py --messages 10000 --repeat 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dovecot_instance import DovecotInstance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
DOVEADM = "/usr/bin/doveadm"
BODY = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\n"
        * 26)

OPEN_INBOX = """
import sys
from pathlib import Path
from mailserver.store.userstore import UserStore
view = UserStore(Path(sys.argv[1])).select("INBOX", read_only=True)
print(len(view.messages), view.uid_validity, view.uid_next)
view.close()
"""


def write_messages(cur: Path, count: int) -> None:
    cur.mkdir(parents=True)
    for sub in ("new", "tmp"):
        (cur.parent / sub).mkdir()
    for i in range(count):
        data = (f"From: a{i % 97}@example.net\nTo: bob@example.org\nSubject: message "
                f"{i}\nMessage-ID: <{i}@example.net>\n\n{BODY}").encode()
        crlf = len(data) + data.count(b"\n")
        (cur / f"{1700000000 + i}.M{i}P1.host,S={len(data)},W={crlf}:2,S"
         ).write_bytes(data)


def measure(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Run `command` under a fresh Python parent, so max RSS is this command's alone."""
    wrapper = ("import resource, subprocess, sys, time\n"
               "t = time.perf_counter()\n"
               "r = subprocess.run(sys.argv[1:], capture_output=True)\n"
               "t = time.perf_counter() - t\n"
               "assert r.returncode == 0, r.stderr.decode(errors='replace')[-2000:]\n"
               "print(t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    result = subprocess.run([sys.executable, "-c", wrapper, *command], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{command[:3]} failed:\n{result.stderr[-3000:]}")
    seconds, rss = result.stdout.split()
    return float(seconds), int(rss)


def clear(maildir: Path, prefixes: tuple[str, ...]) -> None:
    for name in os.listdir(maildir):
        if name.startswith(prefixes):
            os.unlink(maildir / name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                    "dovecot_takeover.md")
    args = ap.parse_args()
    top = Path(tempfile.mkdtemp(prefix="bench-takeover-"))
    try:
        mail_root = top / "vmail"
        maildir = mail_root / "bob"
        t0 = time.perf_counter()
        write_messages(maildir / "cur", args.messages)
        print(f"{args.messages} messages written in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        rows: dict[str, list[tuple[float, int]]] = {"dovecot": [], "inplace": [],
                                                    "import": []}
        with DovecotInstance(top / "dovecot", mail_root, users={"bob": "pw"},
                             protocols=("imap",)) as dovecot:
            for _ in range(args.repeat):
                clear(maildir, ("dovecot",))
                rows["dovecot"].append(measure(
                    [DOVEADM, "-c", str(dovecot.config), "force-resync", "-u", "bob",
                     "INBOX"]))
        uidlist = (maildir / "dovecot-uidlist").read_text().splitlines()
        if len(uidlist) != args.messages + 1:
            raise SystemExit(f"doveadm listed {len(uidlist) - 1} of {args.messages}")
        validity = int(uidlist[0].split()[1][1:])  # "3 V<uidvalidity> N<next> ..."
        # Dovecot would not touch root's files and had them given to `nobody`: back to
        # our owner, so the import hard-links as it does where owners agree.
        for path in [mail_root, *mail_root.rglob("*")]:
            os.lchown(path, os.getuid(), os.getgid())
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        for _ in range(args.repeat):
            clear(maildir, ("mailserver",))
            rows["inplace"].append(measure([sys.executable, "-c", OPEN_INBOX,
                                            str(maildir)], env))
        check = subprocess.run([sys.executable, "-c", OPEN_INBOX, str(maildir)], env=env,
                               capture_output=True, text=True, check=True).stdout.split()
        if check != [str(args.messages), str(validity), str(args.messages + 1)]:
            raise SystemExit(f"the takeover did not keep Dovecot's UIDs: {check}")
        clear(maildir, ("mailserver",))
        for n in range(args.repeat):
            data = top / f"data{n}"
            config = top / f"mailserver{n}.toml"
            config.write_text(f'hostname = "mail.example.org"\ndata_dir = "{data}"\n'
                              '[domains]\nlocal = ["example.org"]\n')
            subprocess.run([str(VENV_BIN / "mailserver"), "--config", str(config), "user",
                            "add", "--weak-ok", "bob@example.org"], input=b"pw-secret-1\n",
                           check=True, env=env, capture_output=True)
            rows["import"].append(measure(
                [str(VENV_BIN / "mailserver"), "--config", str(config), "import",
                 "dovecot", "--from", str(maildir), "--user", "bob@example.org"], env))
            shutil.rmtree(data)
        report(args, rows)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return 0


def report(args: argparse.Namespace, rows: dict[str, list[tuple[float, int]]]) -> None:
    load = os.getloadavg()[0]
    names = {"dovecot": "Dovecot `doveadm force-resync` (its first index of the tree)",
             "inplace": "ours in place: first open (takeover + listing + index)",
             "import": "ours: `mailserver import dovecot` (hard links)"}
    lines = [f"Moving from Dovecot, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{args.messages:,} messages of 2 KiB in one INBOX, median of {args.repeat} "
             f"(load average {load:.1f} at the end); bench/dovecot_takeover.py", "",
             "| what | seconds (median) | runs | max RSS MiB |", "|---|---|---|---|"]
    for key, label in names.items():
        times = [t for t, _ in rows[key]]
        rss = max(r for _, r in rows[key]) / 1024
        lines.append(f"| {label} | {statistics.median(times):.2f} | "
                     f"{' / '.join(f'{t:.2f}' for t in times)} | {rss:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    sys.exit(main())

"""store/sharedfs.py: the store in cluster mode (several nodes over one shared tree).

flock(2) over sshfs and many NFS setups excludes only the processes of one machine, so
the tests that matter here turn flock into a no-op in the processes that play "other
nodes": the store must then still give every message one UID of its own, keep one quota
count and one POP3 session, because in cluster mode it relies on dotlocks alone. The
same tests on a real sshfs mount are in tests/integration/test_cluster_store.py.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from mailserver.config import config_from_dict
from mailserver.errors import ConfigError, ReplyError
from mailserver.interfaces import MailboxId, MaildropInUse, QuotaLimits, QuotaUsage
from mailserver.store import quota, sharedfs
from mailserver.store.delivery import MaildirDelivery
from mailserver.store.maildir import create_maildir, unique_name
from mailserver.store.maildroplock import MaildropLock
from mailserver.store.registry import drop_idle_states
from mailserver.store.sharedfs import DotLock, LockBusy, SharedStore
from mailserver.store.uidlist import UIDLIST_FILE, UidList, read_records
from mailserver.store.userstore import UserStore

ALICE = MailboxId("example.org", "alice")
FORK = multiprocessing.get_context("fork")


@pytest.fixture
def mail_dir(tmp_path: Path) -> Iterator[Path]:
    """Cluster mode as node n1, with a lock timeout of one second."""
    mail = tmp_path / "mail"
    sharedfs.configure(SharedStore("n1", mail, tmp_path / "cache", stale_seconds=1.0))
    drop_idle_states()
    yield mail
    drop_idle_states()
    sharedfs.configure(None)


def _as_other_node(node: str) -> None:
    """This (forked) process is another machine: flock excludes nobody (as over sshfs)."""
    fcntl.flock = lambda fd, op: None  # type: ignore[assignment]
    shared = sharedfs.shared()
    assert shared is not None
    sharedfs.configure(SharedStore(node, shared.mail_dir, shared.cache_dir,
                                   shared.stale_seconds))


def _run(procs: list[multiprocessing.process.BaseProcess]) -> None:
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0


# --------------------------------------------------------------------------- dotlock


def _count_under_lock(path: str, node: str, n: int) -> None:
    _as_other_node(node)
    counter = Path(path)
    for _ in range(n):
        with sharedfs.dotlocked(counter.with_name("counter.dotlock")):
            value = int(counter.read_text() or "0")
            time.sleep(0.0005)  # widen the read-modify-write window
            counter.write_text(str(value + 1))


def test_dotlock_excludes_processes_of_several_nodes(mail_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    _run([FORK.Process(target=_count_under_lock, args=(str(counter), f"n{i}", 100))
          for i in range(4)])
    assert counter.read_text() == "400"
    assert not (tmp_path / "counter.dotlock").exists()


def _hold_forever(path: str, node: str, ready: multiprocessing.synchronize.Event) -> None:
    _as_other_node(node)
    DotLock(Path(path)).acquire()
    ready.set()
    time.sleep(60)


def _killed_holder(path: Path, node: str) -> None:
    ready = FORK.Event()
    holder = FORK.Process(target=_hold_forever, args=(str(path), node, ready))
    holder.start()
    assert ready.wait(10)
    os.kill(holder.pid or 0, signal.SIGKILL)
    holder.join()


def test_stale_lock_of_a_killed_process_on_another_node_is_taken_over(
        mail_dir: Path, tmp_path: Path) -> None:
    lock = tmp_path / "x.dotlock"
    _killed_holder(lock, "n2")
    assert lock.read_bytes().split()[0] == b"n2"
    # n2's pid means nothing here: only the lock's silence for stale_seconds (1 s), so
    # a look at once finds it busy, and a waiting acquire takes it over.
    with pytest.raises(LockBusy):
        DotLock(lock).acquire(wait=False)
    assert lock.read_bytes().split()[0] == b"n2", "not taken over before its silence"
    mine = DotLock(lock)
    mine.acquire()
    assert lock.read_bytes().split()[:2] == [b"n1", b"%d" % os.getpid()]
    mine.release()
    assert not lock.exists()
    assert [p.name for p in tmp_path.iterdir() if "stale" in p.name] == []


def test_lock_of_a_dead_process_of_this_node_is_taken_over_at_once(
        mail_dir: Path, tmp_path: Path) -> None:
    lock = tmp_path / "x.dotlock"
    _killed_holder(lock, "n1")
    mine = DotLock(lock)
    mine.acquire(wait=False)  # LockBusy if it waited for the lock's silence instead
    assert lock.read_bytes().split()[:2] == [b"n1", b"%d" % os.getpid()]
    mine.release()


def _hold_for(path: str, node: str, seconds: float,
              ready: multiprocessing.synchronize.Event) -> None:
    _as_other_node(node)
    lock = DotLock(Path(path))
    lock.acquire()
    ready.set()
    time.sleep(seconds)
    released = Path(path).with_name("released")
    # What the holder finds at release: its own lock (b"mine") or another's.
    mine = Path(path).read_bytes() == lock._content  # noqa: SLF001
    lock.release()
    released.write_bytes(b"mine" if mine else b"taken over")


def test_a_held_lock_is_refreshed_and_not_taken_over(mail_dir: Path, tmp_path: Path) -> None:
    lock = tmp_path / "x.dotlock"
    ready = FORK.Event()
    holder = FORK.Process(target=_hold_for, args=(str(lock), "n2", 3.5, ready))
    holder.start()
    assert ready.wait(60)
    mine = DotLock(lock)
    mine.acquire()  # waits for the release: 3.5 s, three times the stale time
    # The holder writes what it found just after its release, which is when our acquire
    # returns: read it once the holder has ended (reading at once raced the write).
    holder.join(60)
    assert holder.exitcode == 0
    assert (tmp_path / "released").read_bytes() == b"mine", \
        "the holder kept its lock to the end; we had it only after its release"
    mine.release()


def test_non_blocking_acquire_of_a_held_lock_is_busy(mail_dir: Path, tmp_path: Path) -> None:
    first = DotLock(tmp_path / "x.dotlock")
    first.acquire()
    with pytest.raises(LockBusy):
        DotLock(tmp_path / "x.dotlock").acquire(wait=False)
    first.release()
    second = DotLock(tmp_path / "x.dotlock")
    second.acquire(wait=False)
    second.release()


def test_a_lock_taken_over_is_not_unlinked_by_its_old_holder(
        mail_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "x.dotlock"
    old = DotLock(path)
    old.acquire()
    path.write_bytes(b"n2 1 0 feedfacefeedface\n")  # another node took it over
    old.release()
    assert path.read_bytes() == b"n2 1 0 feedfacefeedface\n"


# --------------------------------------------------------------------------- the store


def _deliver_and_number(mail: str, node: str, n: int) -> None:
    _as_other_node(node)
    drop_idle_states()
    root = Path(mail) / "example.org" / "alice"
    store = UserStore(root)
    for i in range(n):
        data = b"Subject: %s %d\n\nbody\n" % (node.encode(), i)
        name = unique_name(len(data), len(data) + data.count(b"\n"))
        (root / "tmp" / name).write_bytes(data)
        os.rename(root / "tmp" / name, root / "new" / name)
        view = store.select("INBOX")  # numbers what it finds: uidlist.assign
        view.close()
        drop_idle_states()


def test_uids_stay_unique_across_nodes_without_flock(mail_dir: Path) -> None:
    root = create_maildir(mail_dir, ALICE)
    _run([FORK.Process(target=_deliver_and_number, args=(str(mail_dir), f"n{i}", 40))
          for i in range(3)])
    found = read_records(root / UIDLIST_FILE)
    assert found is not None
    validity, records = found
    uids = [uid for uid, _ in records]
    bases = [base for _, base in records]
    assert len(uids) == len(set(uids)) == 120  # no UID given twice
    assert len(set(bases)) == 120  # no message numbered twice
    assert uids == sorted(uids)
    listed = UidList(root, root)
    listed.refresh()
    assert listed.validity == validity
    assert not (root / "mailserver-uidlist.lock").exists()  # no flock file in cluster mode


def _count_quota(root: str, node: str, n: int) -> None:
    _as_other_node(node)
    read = quota._read

    def slow_read(fd: int) -> QuotaUsage | None:
        found = read(fd)
        time.sleep(0.0005)  # widen the read-modify-write window
        return found

    quota._read = slow_read  # type: ignore[assignment]
    for _ in range(n):
        quota.change(Path(root), 100, 1)


def test_quota_count_is_kept_across_nodes_without_flock(mail_dir: Path) -> None:
    root = create_maildir(mail_dir, ALICE)
    quota.change(root, 0, 1)
    _run([FORK.Process(target=_count_quota, args=(str(root), f"n{i}", 150))
          for i in range(3)])
    assert quota.peek(root) == QuotaUsage(45_000, 450)


def _pop3_login(root: str, node: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    _as_other_node(node)
    try:
        MaildropLock.acquire(Path(root))
        out.put("locked")
    except MaildropInUse:
        out.put("in-use")


def test_pop3_maildrop_lock_holds_against_another_node(mail_dir: Path) -> None:
    root = create_maildir(mail_dir, ALICE)
    held = MaildropLock.acquire(root)
    out = FORK.Queue()
    _run([FORK.Process(target=_pop3_login, args=(str(root), "n2", out))])
    assert out.get(timeout=5) == "in-use"
    held.release()
    assert not (root / "pop3.lock.dotlock").exists()
    _run([FORK.Process(target=_pop3_login, args=(str(root), "n2", out))])
    assert out.get(timeout=5) == "locked"


def test_sqlite_caches_are_node_local(mail_dir: Path, tmp_path: Path) -> None:
    root = create_maildir(mail_dir, ALICE)
    data = b"Subject: cached\n\nbody\n"
    name = unique_name(len(data), len(data) + data.count(b"\n"))
    (root / "cur" / (name + ":2,")).write_bytes(data)
    store = UserStore(root)
    view = store.select("Sent")
    view.close()
    view = store.select("INBOX")
    view.enable_condstore()  # type: ignore[attr-defined]
    [info] = view.messages
    assert view.header(info.uid) == b"Subject: cached\r\n\r\n"  # type: ignore[attr-defined]
    view.close()
    drop_idle_states()
    cache = tmp_path / "cache" / "example.org" / "alice"
    assert (cache / "mailserver-modseq.db").is_file()
    assert (cache / "mailserver-index.db").is_file()
    shared = [p.name for p in root.rglob("*.db*")]
    assert shared == []  # no SQLite file on the shared tree


def test_new_file_names_carry_the_node(mail_dir: Path) -> None:
    assert unique_name(host="mx.example.org").split(".", 2)[2].startswith(
        "n1.mx.example.org")
    sharedfs.configure(None)
    assert ".n1." not in unique_name(host="mx.example.org")


# --------------------------------------------------------------------------- config


def test_cluster_config_places_the_tree_and_the_caches(tmp_path: Path) -> None:
    config = config_from_dict({"data_dir": str(tmp_path / "d1"), "cluster": {
        "node": "n1", "nodes": {"n1": "10.0.0.1"}, "mail_dir": str(tmp_path / "shared")}})
    assert config.mail_dir == tmp_path / "shared"
    assert config.queue_dir == tmp_path / "d1" / "queue"
    sharedfs.configure_from(config)
    try:
        shared = sharedfs.shared()
        assert shared == SharedStore("n1", tmp_path / "shared", tmp_path / "d1" / "cache",
                                     30.0)
    finally:
        sharedfs.configure(None)
    one = config_from_dict({"data_dir": str(tmp_path / "d1")})
    sharedfs.configure_from(one)
    assert sharedfs.shared() is None
    assert one.mail_dir == tmp_path / "d1" / "mail"


@pytest.mark.parametrize(("cluster", "problem"), [
    ({"cache_dir": "/srv/mail/cache", "mail_dir": "/srv/mail"},
     "cluster.cache_dir: /srv/mail/cache must not be inside the shared mail tree "
     "/srv/mail or contain it"),
    ({"lock_timeout": 2},
     "cluster.lock_timeout: at least 3 seconds (it is refreshed every third of it)"),
])
def test_cluster_config_refuses(tmp_path: Path, cluster: dict[str, object],
                                problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict({"data_dir": str(tmp_path), "cluster": {
            "node": "n1", "nodes": {"n1": "10.0.0.1"}, **cluster}})
    assert e.value.problems == [problem]


def test_rcpt_quota_check_reads_the_shared_count_in_a_thread(mail_dir: Path) -> None:
    """RCPT's check reads the count on the reactor thread on one node only. In cluster
    mode a stalled NFS server must not stall the reactor: the count is read in a disk
    thread (store/quotapeek.py) and RCPT answers from it, still with 452 (try later)
    rather than leaving a full mailbox to the commit's 552 after DATA."""
    root = create_maildir(mail_dir, ALICE)
    quota.change(root, 0, 1)
    quota.change(root, 100, 1)  # one message: full with a limit of one
    jobs: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []

    def run(fn: Any, *args: Any) -> Deferred[Any]:
        jobs.append((fn, args, Deferred()))
        return jobs[-1][2]

    disk = SimpleNamespace(reads=SimpleNamespace(run=run))
    delivery = MaildirDelivery(mail_dir, "mx.example.org", disk,  # type: ignore[arg-type]
                               limits_of=lambda m: QuotaLimits(messages=1))
    delivery.check_quota([ALICE])  # cluster mode: nothing read here, one read handed over
    assert [(fn, args) for fn, args, _ in jobs] == [(quota.peek, (root,))]
    fn, args, d = jobs.pop()
    d.callback(fn(*args))  # the disk thread's read
    with pytest.raises(ReplyError) as caught:
        delivery.check_quota([ALICE])
    assert str(caught.value) == "452 4.2.2 Error: mailbox full"
    assert jobs == []
    sharedfs.configure(None)
    with pytest.raises(ReplyError) as caught:
        delivery.check_quota([ALICE])  # one node: read at once
    assert str(caught.value) == "452 4.2.2 Error: mailbox full"


def test_network_file_systems_are_recognised_by_the_longest_mount(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        "40 22 0:50 / /srv/mail rw - nfs4 nas:/mail rw,vers=4.2\n"
        "41 40 0:51 / /srv/mail/local rw - ext4 /dev/vdb rw\n"
        "42 22 0:52 / /mnt/my\\040share rw - fuse.sshfs root@nas:/x rw\n")
    info = str(mountinfo)
    assert sharedfs.network_fs(Path("/srv/mail/example.org"), info) == "nfs4"
    assert sharedfs.network_fs(Path("/srv/mail"), info) == "nfs4"
    assert sharedfs.network_fs(Path("/srv/mail/local/cache"), info) is None
    assert sharedfs.network_fs(Path("/srv/mailbox"), info) is None
    assert sharedfs.network_fs(Path("/mnt/my share/data"), info) == "fuse.sshfs"
    assert sharedfs.network_fs(Path("/var/lib"), str(tmp_path / "none")) is None


def test_sshfs_eperm_for_a_lock_released_meanwhile_is_tried_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sshfs answers a lost O_EXCL race with EPERM; when the holder released the lock
    before we looked, there is no file to explain it: create again (the rig's 3-node
    run failed a FETCH with [SERVERBUG] on this). A real EPERM is raised in the end."""
    path = tmp_path / "lock.dotlock"
    real_open = os.open
    refusals = [PermissionError(1, "Operation not permitted")] * 2

    def sshfs_open(name: Any, flags: int, mode: int = 0o777) -> int:
        if refusals:
            raise refusals.pop()
        return real_open(name, flags, mode)

    monkeypatch.setattr(sharedfs.os, "open", sshfs_open)
    os.close(sharedfs._create_exclusive(path))
    assert path.exists() and refusals == []
    path.unlink()
    refusals.extend([PermissionError(1, "Operation not permitted")] * sharedfs.EPERM_TRIES)
    with pytest.raises(PermissionError):
        sharedfs._create_exclusive(path)
    assert refusals == [] and not path.exists()


@pytest.mark.parametrize("planted", ["garbage", "empty", "directory"])
def test_anything_else_at_the_lock_path_is_taken_over_once_silent(
        mail_dir: Path, tmp_path: Path, planted: str) -> None:
    lock = tmp_path / "x.dotlock"
    if planted == "directory":
        lock.mkdir()
    else:
        lock.write_bytes(b"\xff\x00 not a lock at all\n" * 20 if planted == "garbage" else b"")
    with pytest.raises(LockBusy):  # not before stale_seconds of silence
        DotLock(lock).acquire(wait=False)
    mine = DotLock(lock)
    mine.acquire()
    assert lock.read_bytes().startswith(b"n1 %d " % os.getpid())
    mine.release()
    assert not lock.exists()
    left = [p.name for p in tmp_path.iterdir() if ".stale." in p.name]
    assert left == (["x.dotlock.stale." + left[0].rpartition(".")[2]]
                    if planted == "directory" else [])

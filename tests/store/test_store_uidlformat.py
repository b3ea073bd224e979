"""pop3.uidl_format: Dovecot's pop3_uidl_format variables, so a POP3 client moving
from Dovecot sees the UIDLs it already holds (RFC 1939 7) and downloads nothing again."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mailserver.config import config_from_dict
from mailserver.errors import ConfigError
from mailserver.interfaces import MailboxId
from mailserver.store.maildir import create_maildir
from mailserver.store.maildrop import snapshot, uidl_for
from mailserver.store.uidlformat import parse_uidl_format

V = 0x6B165384
NAMES = ["1700000001.M1P10.vm", "1700000002.M1P10.vm", "1700000003.M1P10.vm"]


def maildir(tmp_path: Path, uidlist: str | None) -> Path:
    root = create_maildir(tmp_path / "mail", MailboxId("example.org", "bob"))
    for i, base in enumerate(NAMES):
        data = f"Subject: m{i}\n\nbody\n".encode()
        (root / "cur" / f"{base},S={len(data)},W={len(data) + 3}:2,S").write_bytes(data)
    if uidlist is not None:
        (root / "dovecot-uidlist").write_text(uidlist)
        (root / "mailserver-uidlist").unlink(missing_ok=True)
    return root


def uidls(root: Path, fmt: str) -> list[str]:
    return [m.uidl for m in snapshot(root, parse_uidl_format(fmt))]


def test_dovecots_default_format_gives_dovecots_uidls(tmp_path: Path) -> None:
    # What Dovecot 2.3 answered for these UIDs and UIDVALIDITY (probed: its %X is
    # lower-case hex).
    root = maildir(tmp_path, f"3 V{V} N9\n1 :{NAMES[0]}\n3 :{NAMES[1]}\n7 :{NAMES[2]}\n")
    assert uidls(root, "%08Xu%08Xv") == [
        "000000016b165384", "000000036b165384", "000000076b165384"]


def test_new_mail_gets_the_next_uid_and_keeps_its_uidl(tmp_path: Path) -> None:
    root = maildir(tmp_path, f"3 V{V} N9\n1 :{NAMES[0]}\n3 :{NAMES[1]}\n7 :{NAMES[2]}\n")
    (root / "new" / "1700000009.M1P11.vm,S=5,W=6").write_bytes(b"a\n\nb\n")
    first = uidls(root, "%u/%v")
    assert first[-1] == f"9/{V}"
    assert uidls(root, "%u/%v") == first  # the same at the next login


def test_every_variable_and_form(tmp_path: Path) -> None:
    root = maildir(tmp_path, f"3 V{V} N9\n1 G00ff :{NAMES[0]}\n3 :{NAMES[1]}\n")
    md5 = hashlib.md5(b"Subject: m0\n\n").hexdigest()
    got = uidls(root, "%{uid}-%Xv-%g-%3Ug-%%")
    assert got[0] == "1-6b165384-00ff-00F-%"
    # No G field: the base name, as Dovecot's Maildir GUID.
    assert got[1] == f"3-6b165384-{NAMES[1]}-170-%"
    assert got[2].startswith("9-")  # unlisted: numbered after Dovecot's next UID
    assert uidls(root, "%m")[0] == md5
    assert uidls(root, "%f")[0] == f"{NAMES[0]},S=18,W=21"


def test_default_format_is_the_base_name(tmp_path: Path) -> None:
    root = maildir(tmp_path, None)
    assert [m.uidl for m in snapshot(root)] == NAMES


def test_md5_read_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = maildir(tmp_path, None)
    import mailserver.store.uidlformat as uf

    def boom(path: str) -> str:
        raise AssertionError("a header was read")
    monkeypatch.setattr(uf, "_header_md5", boom)
    uidls(root, "%08Xu%08Xv")  # no file opened
    with pytest.raises(AssertionError, match="a header was read"):
        uidls(root, "%m")


def test_a_uidl_outside_rfc_1939_is_hashed(tmp_path: Path) -> None:
    root = maildir(tmp_path, None)
    got = uidls(root, "%f with space %u")
    assert got[0] == uidl_for(f"{NAMES[0]},S=18,W=21 with space 1")
    assert got[0].startswith("H") and len(got[0]) == 41


@pytest.mark.parametrize("fmt, error", [
    ("%08Xq", "unknown variable at '%08Xq'"),
    ("%{user}", "unknown variable at '%{user}'"),
    ("abc", "no variable"),
    ("%%", "no variable"),
    ("%u%", "unknown variable at '%'"),
])
def test_config_refuses_bad_formats(fmt: str, error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"pop3": {"uidl_format": fmt}})
    assert f"pop3.uidl_format: {error}" in str(caught.value)


def test_config_default_and_dovecots() -> None:
    assert config_from_dict({}).pop3.uidl_format == ""
    assert config_from_dict({"pop3": {"uidl_format": "%08Xu%08Xv"}}).pop3.uidl_format \
        == "%08Xu%08Xv"


def test_a_numbers_only_format_outside_rfc_1939_is_hashed_too(tmp_path: Path) -> None:
    root = maildir(tmp_path, f"3 V{V} N9\n1 :{NAMES[0]}\n")
    assert uidls(root, "%u %v")[0] == uidl_for(f"1 {V}")
    assert uidls(root, "%u" + "x" * 69)[0] == uidl_for("1" + "x" * 69)  # 70 is fine...
    assert uidls(root, "%u" + "x" * 69)[2] == uidl_for("10" + "x" * 69)  # ...71 is not


# -- saved UIDLs: the `P` field of a dovecot-uidlist record ------------------------------


SAVED = (f"3 V{V} N9\n1 P0000ab12.old-server :{NAMES[0]}\n3 G00ff :{NAMES[1]}\n"
         f"7 W21 Pzz-9 :{NAMES[2]}\n")


@pytest.mark.parametrize("fmt", ["", "%08Xu%08Xv", "%g"])
def test_a_saved_uidl_wins_whatever_the_format(tmp_path: Path, fmt: str) -> None:
    """Dovecot answers the UIDL it saved (pop3_save_uidl, the pop3-migration plugin)
    before its pop3_uidl_format; the client holds those, so we answer them too."""
    root = maildir(tmp_path, SAVED)
    got = uidls(root, fmt) if fmt else [m.uidl for m in snapshot(root)]
    assert got[0] == "0000ab12.old-server"
    assert got[2] == "zz-9"
    unsaved = {"": NAMES[1], "%08Xu%08Xv": "000000036b165384", "%g": "00ff"}[fmt]
    assert got[1] == unsaved


def test_a_saved_uidl_follows_a_changed_uidlist(tmp_path: Path) -> None:
    """Read again when Dovecot (still running beside us) rewrites its file."""
    root = maildir(tmp_path, SAVED)
    assert [m.uidl for m in snapshot(root)][0] == "0000ab12.old-server"
    (root / "dovecot-uidlist").write_text(SAVED.replace("P0000ab12.old-server", "Pnew-1"))
    assert [m.uidl for m in snapshot(root)][0] == "new-1"


def test_a_saved_uidl_outside_rfc_1939_is_hashed(tmp_path: Path) -> None:
    """RFC 1939 7: 1-70 characters 0x21-0x7E; a longer saved one is replaced by the same
    stable hash a long base name gets."""
    long_uidl = "x" * 71
    root = maildir(tmp_path, f"3 V{V} N9\n1 P{long_uidl} :{NAMES[0]}\n")
    got = [m.uidl for m in snapshot(root)]
    assert got[0] == uidl_for(long_uidl) != long_uidl
    assert len(got[0]) <= 70

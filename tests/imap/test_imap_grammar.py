"""The IMAP grammar (mailserver.imap.grammar): every command form, and hostile input."""

from __future__ import annotations

import datetime

import pytest

from mailserver.imap import grammar
from mailserver.imap.commands import Refusal, sequence_indexes, uid_set_text
from mailserver.imap.grammar import (
    FetchAtt,
    ParseError,
    SearchAnd,
    SearchKey,
    SearchNot,
    SearchOr,
    Section,
    SequenceSet,
    parse_command,
)
from mailserver.interfaces import MessageInfo


def parse(text: bytes) -> grammar.Command:
    return parse_command(text + b"\r\n")


def refused(text: bytes) -> ParseError:
    with pytest.raises(ParseError) as caught:
        parse(text)
    return caught.value


# -- basics ------------------------------------------------------------------------------

def test_simple_commands_any_case() -> None:
    for word in ("CAPABILITY", "noop", "Logout", "STARTTLS", "check", "CLOSE", "UNSELECT",
                 "EXPUNGE", "IDLE", "NAMESPACE"):
        command = parse(b"a1 " + word.encode())
        assert isinstance(command, grammar.Simple)
        assert command.name == word.upper() and command.tag == "a1"


def test_tag_rules() -> None:
    assert refused(b"+tag NOOP").text == "missing or invalid tag"
    assert refused(b"* NOOP").tag is None
    assert parse(b"a]1 NOOP").tag == "a]1"
    assert refused(b"a1").text == "missing command"
    assert refused(b"a1 FROB").tag == "a1"
    assert refused(b"a1 NOOP extra").text.startswith("unexpected characters")


def test_login_astrings_quoted_and_literal() -> None:
    command = parse(b'a LOGIN "al\\"ice" {6}\r\nsecret')
    assert isinstance(command, grammar.Login)
    assert command.user == b'al"ice' and command.password == b"secret"
    plus = parse(b"a LOGIN {5+}\r\nalice pass")
    assert isinstance(plus, grammar.Login) and plus.user == b"alice"


def test_bad_quoting() -> None:
    assert "unterminated" in refused(b'a LOGIN "alice pass').text
    assert "escape" in refused(b'a LOGIN "a\\lice" pass').text


def test_literal_announcement_over_32_bits() -> None:
    assert grammar.literal_at_end(b"a LOGIN {4294967296}\r\n") == (4294967296, False)
    assert grammar.literal_at_end(b"a APPEND x {12+}\r\n") == (12, True)
    assert grammar.literal_at_end(b"a NOOP\r\n") is None
    assert grammar.command_word(b"a uid fetch 1 x\r\n") == "FETCH"
    assert grammar.command_word(b"a APPEND x {3}\r\n") == "APPEND"


def test_authenticate_with_and_without_initial_response() -> None:
    command = parse(b"a AUTHENTICATE plain AGFsaWNlAHNlY3JldA==")
    assert isinstance(command, grammar.Authenticate)
    assert command.mechanism == "PLAIN" and command.initial == b"AGFsaWNlAHNlY3JldA=="
    assert parse(b"a AUTHENTICATE PLAIN").initial is None  # type: ignore[attr-defined]


# -- sequence sets -------------------------------------------------------------------------

def test_sequence_sets() -> None:
    command = parse(b"a FETCH 2,4:7,*:4,9:* FLAGS")
    assert isinstance(command, grammar.Fetch)
    assert command.sequence == SequenceSet(((2, 2), (4, 7), (None, 4), (9, None)))
    assert command.sequence.resolve(10) == [(2, 2), (4, 7), (4, 10), (9, 10)]
    star = parse(b"a FETCH *:* FLAGS")
    assert star.sequence.ranges == ((None, None),)  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad_set", [b"0", b"1:0", b"4294967296", b"1,,2", b"1:", b"a",
                                     b"99999999999999999999"])
def test_invalid_sequence_sets(bad_set: bytes) -> None:
    error = refused(b"a FETCH " + bad_set + b" FLAGS")
    assert error.tag == "a"


def test_largest_number_is_accepted() -> None:
    command = parse(b"a UID FETCH 4294967295 FLAGS")
    assert command.sequence.ranges == ((4294967295, 4294967295),)  # type: ignore[attr-defined]


def _infos(*uids: int) -> list[MessageInfo]:
    return [MessageInfo(uid, frozenset(), 10, 0.0) for uid in uids]


def test_sequence_indexes_numbers_and_uids() -> None:
    messages = _infos(3, 5, 9, 20)
    assert sequence_indexes(messages, SequenceSet(((2, None),)), uid=False) == [1, 2, 3]
    assert sequence_indexes(messages, SequenceSet(((None, None),)), uid=False) == [3]
    with pytest.raises(Refusal):
        sequence_indexes(messages, SequenceSet(((5, 5),)), uid=False)
    assert sequence_indexes(messages, SequenceSet(((4, 10),)), uid=True) == [1, 2]
    # RFC 3501 6.4.8: a range beyond the highest UID still names the highest.
    assert sequence_indexes(messages, SequenceSet(((100, None),)), uid=True) == [3]
    assert sequence_indexes([], SequenceSet(((1, None),)), uid=False) == []
    assert sequence_indexes([], SequenceSet(((1, None),)), uid=True) == []


def test_uid_set_text() -> None:
    assert uid_set_text([1, 2, 3, 5, 7, 8]) == "1:3,5,7:8"
    assert uid_set_text([9]) == "9"
    assert uid_set_text([]) == ""


# -- FETCH ---------------------------------------------------------------------------------

def test_fetch_macros() -> None:
    command = parse(b"a FETCH 1 ALL")
    assert [i.name for i in command.items] == [  # type: ignore[attr-defined]
        "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"]
    full = parse(b"a FETCH 1 full")
    assert full.items[-1] == FetchAtt("BODY")  # type: ignore[attr-defined]
    assert len(parse(b"a FETCH 1 FAST").items) == 3  # type: ignore[attr-defined]


def test_fetch_sections_and_partials() -> None:
    command = parse(b"a UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (From \"To\")]<0.100> "
                    b"BODY[1.2.MIME] body[] BODY[TEXT]<5.10> RFC822.SIZE BODYSTRUCTURE)")
    assert isinstance(command, grammar.Fetch) and command.uid
    uid, fields, mime, whole, text, size, structure = command.items
    assert fields == FetchAtt("BODY[]", Section((), "HEADER.FIELDS", ("From", "To")), True,
                              (0, 100))
    assert fields.label() == "BODY[HEADER.FIELDS (From To)]<0>"
    assert not fields.sets_seen and whole.sets_seen
    assert mime.section == Section((1, 2), "MIME")
    assert mime.label() == "BODY[1.2.MIME]"
    assert whole.label() == "BODY[]"
    assert text.partial == (5, 10)
    assert size.name == "RFC822.SIZE" and structure.name == "BODYSTRUCTURE"


@pytest.mark.parametrize("bad_item", [b"BODY[MIME]", b"BODY[0]", b"BODY[1.]", b"BODY[HEADER",
                                      b"BODY[]<1.0>", b"BINARY[1.MIME]", b"FROB", b"(FLAGS",
                                      b"BODY.PEEK", b"BODY[HEADER.FIELDS ()]",
                                      b"BODY[HEADER.FIELDS (a:b)]"])
def test_bad_fetch_items(bad_item: bytes) -> None:
    refused(b"a FETCH 1 " + bad_item)


# -- STORE / COPY / STATUS / APPEND / LIST ------------------------------------------------

def test_store_forms() -> None:
    command = parse(b"a UID STORE 1:3 +FLAGS.SILENT (\\Seen $Label1)")
    assert isinstance(command, grammar.Store)
    assert (command.mode, command.silent, command.flags) == ("+", True, ("\\Seen", "$Label1"))
    bare = parse(b"a STORE 1 -flags \\Deleted \\Flagged")
    assert bare.mode == "-" and bare.flags == ("\\Deleted", "\\Flagged")  # type: ignore
    assert parse(b"a STORE 1 FLAGS ()").flags == ()  # type: ignore[attr-defined]
    refused(b"a STORE 1 +FLAGS (\\Recent)")
    refused(b"a STORE 1 LABELS (x)")


def test_copy_move_status() -> None:
    command = parse(b'a UID MOVE 1:* "Trash"')
    assert isinstance(command, grammar.Copy) and command.name == "MOVE" and command.uid
    status = parse(b"a STATUS inbox (MESSAGES UIDNEXT unseen)")
    assert isinstance(status, grammar.Status)
    assert status.mailbox == "INBOX" and status.items == ("MESSAGES", "UIDNEXT", "UNSEEN")
    refused(b"a STATUS INBOX (SIZES)")  # SIZE is RFC 8438's
    refused(b"a STATUS INBOX ()")


def test_append() -> None:
    command = parse(b'a APPEND Drafts (\\Draft \\Seen) " 7-Feb-1994 21:52:25 -0800" {5}\r\n'
                    b"hello")
    assert isinstance(command, grammar.Append)
    assert command.flags == ("\\Draft", "\\Seen")
    assert command.date == " 7-Feb-1994 21:52:25 -0800" and command.message == b"hello"
    plain = parse(b"a APPEND INBOX {3+}\r\nabc")
    assert plain.flags == () and plain.date is None  # type: ignore[attr-defined]
    refused(b'a APPEND INBOX "yesterday" {3}\r\nabc')
    refused(b"a APPEND INBOX abc")


def test_list_forms() -> None:
    command = parse(b'a LIST "" "*"')
    assert isinstance(command, grammar.ListCommand)
    assert (command.reference, command.pattern) == ("", "*")
    extended = parse(b'a LIST (SPECIAL-USE) "" % RETURN (CHILDREN)')
    assert extended.select == ("SPECIAL-USE",)  # type: ignore[attr-defined]
    assert extended.returns == ("CHILDREN",)  # type: ignore[attr-defined]
    lsub = parse(b"a LSUB foo. Sent*")
    assert lsub.reference == "foo." and lsub.pattern == "Sent*"  # type: ignore


def test_mailbox_names() -> None:
    assert parse(b"a SELECT inbox").mailbox == "INBOX"  # type: ignore[attr-defined]
    assert parse(b"a CREATE Inbox.Sub").mailbox == "INBOX.Sub"  # type: ignore
    assert parse(b'a CREATE "a b"').mailbox == "a b"  # type: ignore[attr-defined]
    assert parse(b"a CREATE &AOk-t&AOk-").mailbox == "&AOk-t&AOk-"  # type: ignore
    refused(b"a CREATE {3}\r\na\0b")
    refused(b"a CREATE \xff\xfe")


@pytest.mark.parametrize("name,problem", [
    ("a..b", "invalid hierarchy"), ("../x", "cannot contain /"), ("a/b", "cannot contain /"),
    (".hidden", "invalid hierarchy"), ("x" * 1025, "too long"), ("a\0b", "control"),
    ("caf\u00e9", "modified UTF-7"), ("", "empty"),
])
def test_store_name_problems(name: str, problem: str) -> None:
    found = grammar.store_name_problem(name)
    assert found is not None and problem in found


def test_good_store_names() -> None:
    for name in ("Sent", "a.b.c", "&AOk-t&AOk-", "x" * 1024, "with space"):
        assert grammar.store_name_problem(name) is None


# -- SEARCH --------------------------------------------------------------------------------

def test_search_program() -> None:
    command = parse(b'a UID SEARCH CHARSET utf-8 OR FROM "bob" NOT (SEEN LARGER 100) '
                    b"SINCE 1-Feb-1994 HEADER X-Spam yes 1:5 UID 3:*")
    assert isinstance(command, grammar.Search) and command.uid
    assert command.charset == "UTF-8"
    program = command.program
    assert isinstance(program, SearchAnd)
    first, since, header, seq, uid = program.keys
    assert first == SearchOr(SearchKey("FROM", b"bob"),
                             SearchNot(SearchAnd((SearchKey("SEEN"),
                                                  SearchKey("LARGER", 100)))))
    assert since == SearchKey("SINCE", datetime.date(1994, 2, 1))
    assert header == SearchKey("HEADER", ("X-Spam", b"yes"))
    assert seq == SearchKey("SEQUENCE", SequenceSet(((1, 5),)))
    assert uid == SearchKey("UID", SequenceSet(((3, None),)))


def test_search_dates_quoted() -> None:
    command = parse(b'a SEARCH SENTBEFORE "31-Dec-2020"')
    assert command.program == SearchKey(  # type: ignore[attr-defined]
        "SENTBEFORE", datetime.date(2020, 12, 31))
    refused(b"a SEARCH ON 31-Foo-2020")
    refused(b"a SEARCH ON 31-Feb-2020")


def test_deep_nesting_is_refused_not_a_crash() -> None:
    deep = b"(" * 100000 + b"ALL" + b")" * 100000
    error = refused(b"a SEARCH " + deep)
    assert error.code == "LIMIT" and error.tag == "a"
    nots = b"NOT " * 5000 + b"ALL"
    assert refused(b"a SEARCH " + nots).code == "LIMIT"
    ok = b"(" * 20 + b"ALL" + b")" * 20
    assert parse(b"a SEARCH " + ok).program == SearchKey("ALL")  # type: ignore


@pytest.mark.parametrize("bad_search", [b"", b"FROB", b"FROM", b"OR ALL", b"(ALL", b"LARGER x",
                                        b"UID 0", b"KEYWORD", b"CHARSET"])
def test_bad_search(bad_search: bytes) -> None:
    refused(b"a SEARCH " + bad_search)


def test_id_and_enable() -> None:
    command = parse(b'a ID ("name" "Thunderbird" "version" NIL)')
    assert isinstance(command, grammar.Id)
    assert command.params == (("name", "Thunderbird"), ("version", None))
    assert parse(b"a ID NIL").params is None  # type: ignore[attr-defined]
    assert parse(b"a ENABLE CONDSTORE utf8=accept").capabilities == (  # type: ignore
        "CONDSTORE", "UTF8=ACCEPT")
    refused(b"a ENABLE")

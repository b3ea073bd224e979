"""THREAD (RFC 5256 4): ORDEREDSUBJECT and REFERENCES over the messages a search found.

Everything here is iterative, never recursive: a chain of 10,000 replies (or a hostile
References header) is a tree 10,000 deep, which would overflow Python's stack. Loops
in References (a message naming itself, two naming each other) are cut where RFC 5256
says: a link that would close a loop is not made (step 1.B/1.C), so the result is
always a forest. The work is bounded by the ids kept per message
(sortkeys.MAX_REFERENCES) times the messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from mailserver.imap.sort import ANSWERS, entries, matching, signature
from mailserver.interfaces import IMailboxView

#: Steps up the tree that the loop checks of one THREAD may take in all (RFC 5256 4
#: step 1.B/1.C); past them a link is taken for a loop and not made. Real folders
#: need a few per message; 10k messages of 256 looping ids each stay within it.
MAX_LOOP_STEPS = 2_000_000

#: (sent date, sequence number): the order of siblings and threads (RFC 5256 4 step 6).
_Order = tuple[float, int]


class _Node:
    """A container of the REFERENCES algorithm: a message, or a dummy (number 0)."""

    __slots__ = ("number", "order", "subject", "reply", "parent", "children")

    def __init__(self) -> None:
        self.number = 0          # sequence number or UID as answered; 0 for a dummy
        self.order: _Order = (0.0, 0)
        self.subject = b""
        self.reply = False
        self.parent: _Node | None = None
        self.children: list[_Node] = []

    def is_ancestor_of(self, other: _Node, budget: list[int]) -> bool:
        """Is self `other` or above it? Only a node with children can be above another,
        so the common case (linking a fresh container) costs nothing. Each step up
        spends one of `budget[0]`; with none left the answer is yes, so the link is not
        made: hostile References cannot make a THREAD walk without end."""
        if self is other:
            return True
        if not self.children:
            return False
        node = other.parent
        while node is not None:
            if node is self:
                return True
            budget[0] -= 1
            if budget[0] < 0:
                return True
            node = node.parent
        return False


def _link(parent: _Node, child: _Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def run_thread(view: IMailboxView, algorithm: str, program: Any, uid: bool,
               cache_key: tuple[Any, ...] | None = None) -> bytes:
    """The body of the `* THREAD` answer (without the word). Blocking."""
    found = matching(view, program, cache_key)
    answer_key = None if cache_key is None else (cache_key, "THREAD", algorithm, uid)
    sign = signature(view, found)
    cached: bytes | None = ANSWERS.get(answer_key, sign)
    if cached is not None:
        return cached
    rows = entries(view, found, cache_key, True)
    messages = []
    for seq, info, keys in rows:
        assert keys is not None
        date = info.internal_date if keys.date is None else keys.date
        messages.append((info.uid if uid else seq, (date, seq), keys))
    if algorithm == "ORDEREDSUBJECT":
        answer = _render(_ordered_subject(messages))
    else:
        answer = _render(_references(messages))
    if len(rows) == len(found):  # not when some vanished meanwhile
        ANSWERS.put(answer_key, sign, answer, len(found))
    return answer


def _ordered_subject(messages: list[tuple[int, _Order, Any]]) -> list[_Node]:
    """RFC 5256 4 ORDEREDSUBJECT: sort by base subject then sent date; each run of one
    subject is a thread whose first message is the parent of all the others."""
    ordered = sorted(messages, key=lambda m: (m[2].subject, m[1]))
    roots: list[_Node] = []
    current: _Node | None = None
    for number, order, keys in ordered:
        node = _Node()
        node.number, node.order = number, order
        if current is not None and current.subject == keys.subject:
            node.parent = current
            current.children.append(node)
            continue
        node.subject = keys.subject
        current = node
        roots.append(node)
    roots.sort(key=lambda n: n.order)
    return roots


def _references(messages: list[tuple[int, _Order, Any]]) -> list[_Node]:
    """RFC 5256 4 REFERENCES (after JWZ), steps 1 to 6."""
    table: dict[bytes, _Node] = {}
    all_nodes: list[_Node] = []
    budget = [MAX_LOOP_STEPS]

    def container(message_id: bytes) -> _Node:
        node = table.get(message_id)
        if node is None:
            node = table[message_id] = _Node()
            all_nodes.append(node)
        return node

    for number, order, keys in messages:
        # 1.A: the message's container; a missing or duplicate Message-ID gets one
        # of its own.
        node = table.get(keys.message_id) if keys.message_id else None
        if node is None or node.number:
            node = _Node()
            all_nodes.append(node)
            if keys.message_id and keys.message_id not in table:
                table[keys.message_id] = node
        node.number, node.order = number, order
        node.subject, node.reply = keys.subject, keys.reply
        # 1.B: link the References in order, each the parent of the next, unless the
        # child has a parent already or the link would make a loop.
        refs = [container(r) for r in keys.references]
        for parent, child in zip(refs, refs[1:], strict=False):
            if child.parent is None and not child.is_ancestor_of(parent, budget):
                _link(parent, child)
        # 1.C: the last reference is the message's parent: the message's own
        # References win over a parent guessed from another's, so that guess goes
        # first; no parent when there are none, or when the link would make a loop.
        if node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
        if refs and not node.is_ancestor_of(refs[-1], budget):
            _link(refs[-1], node)
    roots = [n for n in all_nodes if n.parent is None]  # step 2
    roots = _prune(roots)                                # step 4
    _sort_tree(roots)                                    # step 6 (5 needs dates)
    roots = _group_by_subject(roots)                     # step 5
    _sort_tree(roots)
    return roots


def _prune(roots: list[_Node]) -> list[_Node]:
    """Step 4: dummies without children go; a dummy's children take its place, except
    a dummy at the top with more than one child (it holds a thread together)."""
    out: list[_Node] = []
    # (node, the list its kept form goes to, at top level?)
    stack: list[tuple[_Node, list[_Node], bool]] = [(n, out, True) for n in reversed(roots)]
    while stack:
        node, into, top = stack.pop()
        if not node.number and not node.children:
            continue
        if not node.number and not (top and len(node.children) > 1):
            # Promote the children (they are looked at in turn, at this level).
            for child in reversed(node.children):
                child.parent = node.parent
                stack.append((child, into, top))
            continue
        children, node.children = node.children, []
        into.append(node)
        for child in reversed(children):
            child.parent = node
            stack.append((child, node.children, False))
    # The stack visits in reverse push order, so each list was filled in order.
    return out


def _walk(roots: Iterable[_Node]) -> list[_Node]:
    """Every node, parents after their children (post-order), without recursion."""
    order: list[_Node] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    order.reverse()
    return order


def _sort_tree(roots: list[_Node]) -> None:
    """Step 6: siblings by sent date, then mailbox order; a dummy takes the date of
    its first child once that child's siblings are sorted."""
    for node in _walk(roots):
        if node.children:
            node.children.sort(key=lambda n: n.order)
            if not node.number:
                node.order = node.children[0].order
    roots.sort(key=lambda n: n.order)


def _subject_of(node: _Node) -> tuple[bytes, bool]:
    if node.number:
        return node.subject, node.reply
    first = node.children[0] if node.children else None
    return (first.subject, first.reply) if first is not None else (b"", False)


def _group_by_subject(roots: list[_Node]) -> list[_Node]:
    """Step 5: threads whose top messages share a base subject are joined."""
    table: dict[bytes, _Node] = {}
    for node in roots:  # 5.B/5.C: the table's choice per subject
        subject, reply = _subject_of(node)
        if not subject:
            continue
        old = table.get(subject)
        if (old is None or (not node.number and old.number)
                or (old.number and _subject_of(old)[1] and not reply
                    and node.number)):
            table[subject] = node
    out: list[_Node] = []
    replaced: dict[int, _Node] = {}
    position: dict[int, int] = {}  # id of a node in `out` -> its index there
    for node in roots:
        subject, reply = _subject_of(node)
        chosen = table.get(subject) if subject else None
        if chosen is None or chosen is node:
            position[id(node)] = len(out)
            out.append(replaced.get(id(node), node))
            continue
        target = replaced.get(id(chosen), chosen)
        if not target.number and not node.number:
            for child in node.children:  # both dummies: merge the children
                child.parent = target
                target.children.append(child)
        elif not target.number:
            node.parent = target
            target.children.append(node)
        elif reply and not _subject_of(target)[1]:
            node.parent = target
            target.children.append(node)
        else:
            # Neither is the other's reply: a new dummy holds both, in chosen's place.
            dummy = _Node()
            for child in (target, node):
                child.parent = dummy
                dummy.children.append(child)
            replaced[id(chosen)] = dummy
            index = position.get(id(target))
            if index is not None:
                out[index] = dummy
    return out


def _render(roots: Sequence[_Node]) -> bytes:
    """RFC 5256 4 thread-list: `(a b (c)(d))`; a node with one child continues its
    list, one with several opens a list per child. Iterative (deep chains)."""
    out: list[bytes] = []
    # Work items: a node to write, or a literal piece of output.
    stack: list[_Node | bytes] = []
    for root in reversed(roots):
        stack += [b")", root, b"("]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):
            out.append(item)
            continue
        node = item
        if node.number:
            out.append(b"%d" % node.number)
        children = node.children
        if len(children) == 1 and node.number:
            stack += [children[0], b" "]
        elif children:
            for child in reversed(children):
                stack += [b")", child, b"("]
            if node.number:
                stack.append(b" ")
    return b"".join(out)

"""Weak passwords, refused by `mailserver user add` and `user passwd`.

Online guessing is slowed by the lock-outs (control.py), but a sprayer trying the ten
most common passwords on every account needs only ten tries per account. NIST SP
800-63B 3.1.1.2 asks verifiers to refuse passwords from lists of commonly used or
compromised values and context-specific words (the service, the user name), and to
want a minimum length rather than composition rules. So: at least MIN_LENGTH
characters, and what is left after taking out common words, keyboard runs, repeated
characters, digits and the user's own address must still be MIN_REST characters. A
shipped list, not zxcvbn: no dependency, and it refuses what sprayers try first.
`--weak-ok` overrides it for scripts that know better.
"""

from __future__ import annotations

import re

MIN_LENGTH = 10
MIN_REST = 4

#: The words at the top of every leaked-password list (lower case, de-leeted), the
#: longest first so "password" goes before "pass".
COMMON_WORDS = tuple(sorted({
    "password", "passwort", "passw0rd", "pass", "welcome", "letmein", "admin",
    "administrator", "root", "login", "qwerty", "qwertz", "azerty", "asdf", "zxcv",
    "iloveyou", "love", "dragon", "monkey", "football", "baseball", "soccer", "hockey",
    "sunshine", "princess", "master", "shadow", "superman", "batman", "michael",
    "jennifer", "jordan", "hunter", "ranger", "trustno", "whatever", "secret", "summer",
    "winter", "spring", "autumn", "freedom", "hello", "charlie", "computer", "internet",
    "starwars", "pokemon", "cheese", "flower", "mustang", "harley", "killer", "access",
    "changeme", "default", "guest", "user", "test", "testing", "mail", "email",
    "mailserver", "server", "postmaster", "abc", "abcd", "abcdef", "nothing", "ninja",
    "matrix", "samsung", "google", "apple", "linux", "windows", "china", "london",
    "berlin", "paris", "december", "november", "october", "september", "august", "july",
    "june", "may", "april", "march", "february", "january", "monday", "friday",
}, key=lambda w: (-len(w), w)))

KEYBOARD_ROWS = ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm", "qwertzuiop",
                 "azertyuiop", "abcdefghijklmnopqrstuvwxyz")
LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t",
                      "@": "a", "$": "s", "!": "i"})


def weakness(password: str, address: str = "") -> str | None:
    """Why `password` is too weak for `address`, or None."""
    if len(password) < MIN_LENGTH:
        return f"shorter than {MIN_LENGTH} characters"
    text = password.lower()
    context = [w for w in re.split(r"[^a-z0-9]+", address.lower()) if len(w) >= 3]
    # Runs first (on the digits as typed), then words on the de-leeted text.
    text = _strip_runs(text)
    text = text.translate(LEET)
    for word in sorted(context, key=len, reverse=True) + list(COMMON_WORDS):
        text = text.replace(word, "")
    text = re.sub(r"[\d\W_]", "", text)  # digits and punctuation add little
    text = re.sub(r"(.)\1+", r"\1", text)  # aaaa -> a
    if len(text) < MIN_REST:
        return ("made of common words, keyboard runs, repeated characters, digits or "
                "the address itself")
    return None


def _strip_runs(text: str) -> str:
    """Take out keyboard and alphabet runs of 4 or more ("1234", "asdf", "dcba")."""
    for row in KEYBOARD_ROWS:
        for sequence in (row, row[::-1]):
            for size in range(len(sequence), 3, -1):
                for start in range(len(sequence) - size + 1):
                    run = sequence[start:start + size]
                    if run in text:
                        text = text.replace(run, "")
    return text

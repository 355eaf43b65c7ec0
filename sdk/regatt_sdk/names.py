"""The one codec for image names: exact in the feature store, one escaped line everywhere else.

A store row's name is the file's path as Python reads it from the disk: a ``str`` where bytes
that are not UTF-8 (old disks, Samba shares: ``b"bad\\xffbyte.jpg"``) are kept as lone
surrogates (``os.fsdecode``'s ``surrogateescape``), so the name opens the same file again. The
store keeps it exactly (``names.jsonl`` holds it as a JSON ``\\udcff`` escape).

Everything that leaves the process as text shows :func:`display` of the name instead: the CLI's
one-hit-per-line output, JSON answers of ``regatt serve``, the ``name`` column of a PostgreSQL
table. It is valid UTF-8 on one line: an undecodable byte ``0xff`` becomes the four characters
``\\xff``, control characters (newline, tab, ...) ``\\n``, ``\\t``, ``\\x1b``..., any other lone
surrogate ``\\udXXX``; every other character (backslashes included) is kept. It is idempotent
(``display(display(n)) == display(n)``), so names read back from a table are shown unchanged.
:func:`to_path` turns a displayed name back into the file name it came from.
"""

from __future__ import annotations

import re
import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|[nrt])")


def _needs(ch: str) -> bool:
    code = ord(ch)
    if 0xD800 <= code <= 0xDFFF:
        return True
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp")


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as surrogateescape holds it
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"


def display(name: str) -> str:
    """``name`` as valid UTF-8 on one line (see the module docstring); plain names unchanged."""
    name = str(name)
    if not any(_needs(ch) for ch in name):
        return name
    return "".join(_escape(ch) if _needs(ch) else ch for ch in name)


def _unescape(match: re.Match) -> str:
    text = match.group(1)
    if text[0] in "nrt":
        return {"n": "\n", "r": "\r", "t": "\t"}[text[0]]
    code = int(text[1:], 16)
    if text[0] == "x" and code >= 0x80 and code < 0x100:
        return chr(0xDC00 + code)  # the undecodable byte back (surrogateescape)
    return chr(code)


def to_path(text: str) -> str:
    """The file name a :func:`display`-ed name came from (its escapes undone)."""
    return _ESCAPE.sub(_unescape, str(text))


def candidates(name: str) -> list[str]:
    """``name`` itself, then (when it differs) the name its escapes stand for: the file names a
    shown or stored name may refer to."""
    back = to_path(name)
    return [name] if back == name else [name, back]

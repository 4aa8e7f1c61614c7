"""Read a few top-level entries of a large JSON object without holding the file in memory.

An LVIS v1 training file is 1.1 GB; ``json.load`` of it takes several GB of memory, while
the category statistics need only its ``categories`` (1203 records) and the number of its
``images``. :func:`read_top_level` walks the top-level object with the standard library's
decoder (``json.JSONDecoder.raw_decode``), one array element at a time: the entries asked for
are decoded, the arrays asked to be counted are counted, everything else is decoded element
by element and dropped. Memory stays at one read chunk plus the largest single element.
"""

import json
import re
from typing import Collection, Dict, Union

__all__ = ["read_top_level"]

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_CHUNK_CHARS = 1 << 22
_AFTER_VALUE = frozenset(" \t\n\r,]}:")
# one array element (or non-array value) this large is not LVIS data: a damaged file
_MAX_VALUE_CHARS = 1 << 28


class _Scanner:
    """A read position in a text file, refilled by chunks; consumed text is dropped."""

    def __init__(self, f, path: str):
        self._f, self._path = f, path
        self._buf, self._pos, self._eof = "", 0, False
        self._decoder = json.JSONDecoder()

    def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = self._f.read(_CHUNK_CHARS)
        self._buf, self._pos = self._buf[self._pos :] + chunk, 0
        self._eof = not chunk
        return bool(chunk)

    def error(self, problem: str) -> ValueError:
        return ValueError(
            f"{self._path} is not valid JSON ({problem}); the file is damaged or truncated: "
            f"download or copy it again"
        )

    def peek(self) -> str:
        """The next non-whitespace character ("" at the end of the file), not consumed."""
        while True:
            self._pos = _WHITESPACE.match(self._buf, self._pos).end()
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill():
                return ""

    def expect(self, allowed: str) -> str:
        c = self.peek()
        if not c or c not in allowed:
            raise self.error(f"expected one of {list(allowed)}, found {c or 'the end'!r}")
        self._pos += 1
        return c

    def value(self):
        """Decode the next JSON value. It counts as complete when a delimiter follows it in
        the buffer (a number cut by the chunk's end would decode short) or the file ends."""
        self.peek()
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buf, self._pos)
                if self._eof or (end < len(self._buf) and self._buf[end] in _AFTER_VALUE):
                    self._pos = end
                    return value
                problem = f"a value continues past {_MAX_VALUE_CHARS} characters"
            except json.JSONDecodeError as e:
                if self._eof:
                    raise self.error(str(e)) from e
                problem = str(e)
            if len(self._buf) - self._pos > _MAX_VALUE_CHARS:
                raise self.error(problem)
            self._fill()

    def array(self) -> int:
        """Consume a JSON array element by element; return its length."""
        self.expect("[")
        if self.peek() == "]":
            self._pos += 1
            return 0
        count = 0
        while True:
            self.value()
            count += 1
            if self.expect(",]") == "]":
                return count


def read_top_level(
    path: str, decode: Collection[str], count: Collection[str] = ()
) -> Dict[str, Union[object, int]]:
    """Entries of the JSON object in ``path``: the value of each key in ``decode`` and the
    length of each array in ``count`` that the file has (absent keys are left out).

    Raises:
        OSError: the file cannot be read.
        ValueError: the file is not a JSON object (the message names the file).
    """
    found: Dict[str, Union[object, int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        scan = _Scanner(f, path)
        scan.expect("{")
        if scan.peek() == "}":
            return found
        while True:
            key = scan.value()
            if not isinstance(key, str):
                raise scan.error(f"an object key must be a string, found {key!r}")
            scan.expect(":")
            if key in decode:
                found[key] = scan.value()
            elif scan.peek() == "[":
                length = scan.array()
                if key in count:
                    found[key] = length
            else:
                scan.value()
            if scan.expect(",}") == "}":
                break
        if scan.peek():
            raise scan.error("text after the top-level object")
    return found

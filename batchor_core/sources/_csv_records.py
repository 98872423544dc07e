"""Where CSV records start and end, byte-exact, following pyarrow's quoting rules.

pyarrow parses a block of records fast but does not say where each record sits in the file;
checkpoints and ``file:line`` locations need that. This module finds record boundaries the
way ``pyarrow.csv`` reads them, so row ``k`` of a parsed block is record ``k`` here:

* a quote opens a quoted value only at the start of a field; inside it ``""`` is a quote and
  a lone quote closes it; anything up to the next delimiter after that is literal;
* ``\\r\\n``, ``\\n`` and a lone ``\\r`` end a record outside quotes;
* an empty line is not a record (pyarrow skips it), though it still counts as a line.

Lines are split in C (``bytes.splitlines`` uses the same line endings as pyarrow); only the
lines holding a quote character are matched against the full record pattern.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass, field
from itertools import accumulate

__all__ = ["RecordScanner", "Records"]

_BLANK = frozenset({b"\n", b"\r\n", b"\r"})


@dataclass(slots=True)
class Records:
    """Complete, non-empty records found at the front of a buffer.

    Offsets are relative to the buffer; lines are 1-based file line numbers.

    Attributes:
        starts: Where each record starts.
        ends: Just after each record's line ending.
        lines: The line each record starts on.
        next_lines: The line just after each record.
        end: Just after the last complete line or record (where the next block starts).
        end_line: The line at ``end``.
    """

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    lines: list[int] | range = field(default_factory=list)
    next_lines: list[int] | range = field(default_factory=list)
    end: int = 0
    end_line: int = 1


class RecordScanner:
    """Splits bytes into CSV records for one delimiter and quote character."""

    def __init__(self, *, delimiter: bytes, quote_char: bytes) -> None:
        self._quote = quote_char
        q, d = re.escape(quote_char), re.escape(delimiter)
        # Atomic groups and possessive quantifiers: a field never backtracks into treating
        # its opening quote as a literal, which pyarrow never does either.
        fld = rb"(?>(?:%b(?:[^%b]++|%b%b)*+(?:%b|\Z))?[^%b\r\n]*+)" % (q, q, q, q, q, d)
        self._record = re.compile(rb"%b(?:%b%b)*+(?:\r\n|\n|\r|\Z)" % (fld, d, fld))

    def scan(self, buf: bytes, *, first_line: int, eof: bool) -> Records:
        """Find the complete records at the front of ``buf``.

        Args:
            buf: Bytes starting at a record boundary.
            first_line: The line number of ``buf[0]``.
            eof: Whether ``buf`` runs to the end of the file; if not, a record touching the
                end of ``buf`` is left for the next call (it may continue, or its ``\\r`` may
                be followed by ``\\n``).
        """
        parts = buf.splitlines(keepends=True)  # the same line endings as pyarrow's
        if parts and not eof:
            parts.pop()  # may be cut short (or a "\r" whose "\n" has not been read yet)
        ends = list(accumulate(map(len, parts)))
        count = len(parts)
        # A record spans lines only through a quoted value, so only lines holding a quote
        # character need the full record pattern; every other line is one record.
        spans: dict[int, int] = {}
        if count and buf.find(self._quote, 0, ends[-1]) != -1:
            count = self._spans(buf, parts, ends, spans, eof=eof)
        out = Records(end=ends[count - 1] if count else 0, end_line=first_line + count)
        blanks = parts.count(b"\n") + parts.count(b"\r\n") + parts.count(b"\r")
        if not spans and not blanks:
            out.starts = [0, *ends[: count - 1]] if count else []
            out.ends = ends[:count]
            out.lines = range(first_line, first_line + count)
            out.next_lines = range(first_line + 1, first_line + count + 1)
            return out
        i = 0
        line = first_line
        lines: list[int] = []
        next_lines: list[int] = []
        out.lines, out.next_lines = lines, next_lines
        while i < count:
            j = spans.get(i, i + 1)
            if j > i + 1 or parts[i] not in _BLANK:
                out.starts.append(ends[i - 1] if i else 0)
                out.ends.append(ends[j - 1])
                lines.append(line)
                next_lines.append(line + j - i)
            line += j - i
            i = j
        return out

    def _spans(
        self, buf: bytes, parts: list[bytes], ends: list[int], spans: dict[int, int], *, eof: bool
    ) -> int:
        """Record in ``spans`` each record running over several lines (first -> past last).

        Returns how many of ``parts`` belong to complete records.
        """
        quote, match, size = self._quote, self._record.match, len(buf)
        after = 0  # parts before this belong to a record already matched
        for i, part in enumerate(parts):
            if i < after or quote not in part:
                continue
            start = ends[i - 1] if i else 0
            found = match(buf, start)
            end = found.end() if found else ends[i]
            if end == size and not eof:
                return i  # the record may continue past the buffer
            if end > ends[i]:
                after = bisect_left(ends, end, lo=i) + 1
                spans[i] = after
        return len(parts)

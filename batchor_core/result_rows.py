"""Stored result rows into public :class:`~batchor_core.models.ItemResult` objects, fast.

``results()`` builds one ``ItemResult`` (and usually one ``Usage``) per row, a million
times for a large run. A frozen dataclass's ``__init__`` sets each field through
``object.__setattr__``, which made building the objects cost more than reading the rows.
So each public class has a draft twin here: a plain class with the same ``__slots__``
whose ``__init__`` stores the fields as ordinary attributes, after which the instance
becomes the frozen class by ``__class__`` assignment. Python allows that between classes
with the same slot layout, and the result is an ordinary instance of the public class
(same equality, hash, repr, immutability; ``tests/unit/test_result_rows.py`` pins this).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

from batchor_core import jsoncodec
from batchor_core.models import ItemError, ItemResult, ItemStatus, JSONValue, Usage
from batchor_core.records import ResultRow

__all__ = ["item_results", "new_item_error", "new_item_result", "new_usage"]


class _ItemResultDraft:
    __slots__ = ItemResult.__slots__

    def __init__(
        self,
        item_id: str,
        status: ItemStatus,
        output: object,
        error: ItemError | None,
        attempts: int,
        usage: Usage | None,
        metadata: object,
        cursor: int,
    ) -> None:
        self.item_id = item_id
        self.status = status
        self.output = output
        self.error = error
        self.attempts = attempts
        self.usage = usage
        self.metadata = metadata
        self.cursor = cursor
        self.__class__ = ItemResult  # type: ignore[assignment]


class _UsageDraft:
    __slots__ = Usage.__slots__

    def __init__(
        self, input_tokens: int, output_tokens: int, cached_input_tokens: int, reasoning: int
    ) -> None:
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cached_input_tokens = cached_input_tokens
        self.reasoning_tokens = reasoning
        self.__class__ = Usage  # type: ignore[assignment]


class _ItemErrorDraft:
    __slots__ = ItemError.__slots__

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        self.__class__ = ItemError  # type: ignore[assignment]


# Typed as the public constructors (positional arguments only): each returns an instance
# of the public class, equal to what the public constructor returns.
new_item_result = cast(
    "Callable[[str, ItemStatus, Any, ItemError | None, int, Usage | None, Any, int], ItemResult]",
    _ItemResultDraft,
)
new_usage = cast("Callable[[int, int, int, int], Usage]", _UsageDraft)
new_item_error = cast("Callable[[str, str], ItemError]", _ItemErrorDraft)

_STATUS = {s.value: s for s in ItemStatus}


def item_results(
    rows: Iterable[ResultRow], parse_output: Callable[[str], JSONValue]
) -> Iterator[ItemResult]:
    """The public results of stored rows, one at a time (a page's results are never all
    held at once: memory stays bounded by the page's rows).

    Args:
        rows: Rows from ``read_results`` or ``item_status``.
        parse_output: Turns a completed item's stored output JSON into its ``output``
            (the output model's JSON validator, or a JSON parser).
    """
    statuses = _STATUS
    completed = ItemStatus.COMPLETED
    loads = jsoncodec.loads
    for (
        item_id,
        stored,
        output_json,
        code,
        message,
        attempts,
        tin,
        tout,
        tcached,
        treason,
        meta,
        cursor,
    ) in rows:
        status = statuses[stored]
        if status is completed:
            output = None if output_json is None else parse_output(output_json)
            error = None
        else:
            output = None
            error = new_item_error(code, message or "") if code else None
        yield new_item_result(
            item_id,
            status,
            output,
            error,
            attempts,
            None
            if tin is None and tout is None
            else new_usage(tin or 0, tout or 0, tcached or 0, treason or 0),
            loads(meta) if meta else None,
            cursor,
        )

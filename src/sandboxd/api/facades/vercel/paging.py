"""Vercel's lists: offset paging (the cursor is the offset of the page, opaque to the client),
and the query that the sessions and snapshots lists share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query

T = TypeVar("T")


def page(items: list[T], cursor: str | None, limit: int) -> tuple[list[T], dict[str, Any]]:
    """The page of items at the cursor, and its `pagination` body."""
    # str.isdigit also takes "²", which int() refuses, and a cursor is the client's to send.
    start = int(cursor) if cursor and cursor.isascii() and cursor.isdigit() and len(cursor) <= 18 else 0
    chosen = items[start : start + limit]
    more = start + limit < len(items)
    return chosen, {
        "count": len(chosen),
        "next": str(start + limit) if more else None,
        "prev": str(max(0, start - limit)) if start else None,
    }


@dataclass(frozen=True)
class ListQuery:
    project: str | None
    name: str | None
    limit: int
    cursor: str | None
    descending: bool

    def page(self, oldest_first: list[T]) -> tuple[list[T], dict[str, Any]]:
        """The page of items (given oldest first) in the asked order."""
        ordered = oldest_first[::-1] if self.descending else oldest_first
        return page(ordered, self.cursor, self.limit)


def _list_query(
    project: str | None = None,
    name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    sortOrder: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
) -> ListQuery:
    return ListQuery(project, name, limit, cursor, descending=sortOrder == "desc")


ListParams = Annotated[ListQuery, Depends(_list_query)]

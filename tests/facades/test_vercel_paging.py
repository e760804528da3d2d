"""Vercel's list cursor is the client's to send: whatever it is, a page or the first page, never a 500."""

from __future__ import annotations

import pytest

from sandboxd.api.facades.vercel.paging import page


def test_a_cursor_is_the_offset_of_its_page() -> None:
    chosen, pagination = page(list(range(10)), "3", 3)
    assert chosen == [3, 4, 5] and pagination == {"count": 3, "next": "6", "prev": "0"}
    last, pagination = page(list(range(10)), "9", 3)
    assert last == [9] and pagination["next"] is None


@pytest.mark.parametrize("cursor", ["²", "٣", "9" * 5000, "-1", "1e3", ""])
def test_a_cursor_that_is_no_offset_is_the_first_page(cursor: str) -> None:
    # "²" and "٣" pass str.isdigit but not int(); 5000 digits pass neither int() nor any list.
    chosen, pagination = page(list(range(5)), cursor, 2)
    assert chosen == [0, 1] and pagination["prev"] is None

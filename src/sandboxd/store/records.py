"""Between a pydantic record and its table row: one column per top-level field.

A field stays a Python value where its column has a type (datetimes), else becomes its JSON form
(models, dicts, enums). A model field without a column is refused at import, not found in production."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from functools import cached_property
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel, TypeAdapter
from pydantic_core import to_jsonable_python

from sandboxd.store.types import UtcDateTime

M = TypeVar("M", bound=BaseModel)


class RecordMap(Generic[M]):
    def __init__(
        self,
        model: type[M],
        table: sa.Table,
        derive: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        """``derive`` maps some patched fields' values (the model's own, not yet converted) to more
        columns, the ones that exist only to be filtered on."""
        self.model = model
        self.table = table
        self.derive = derive
        self.fields = tuple(model.model_fields)
        missing = [f for f in self.fields if f not in table.c]
        if missing:
            raise RuntimeError(f"{table.name}: no column for {model.__name__} fields {missing} (add a migration)")
        self.columns = [table.c[f] for f in self.fields]
        self._times = {f for f in self.fields if isinstance(table.c[f].type, UtcDateTime)}
        self._adapters: dict[str, TypeAdapter[Any]] = {}

    @cached_property
    def select(self) -> sa.Select[Any]:
        return sa.select(*self.columns)

    def _column_value(self, field: str, value: Any) -> Any:
        if field in self._times:
            assert value is None or isinstance(value, datetime)
            return value
        return to_jsonable_python(value)

    def row(self, record: M) -> dict[str, Any]:
        values = {f: getattr(record, f) for f in self.fields}
        row = {f: self._column_value(f, v) for f, v in values.items()}
        if self.derive:
            row.update(self.derive(values))
        return row

    def patch(self, patch: Mapping[str, Any], frozen: frozenset[str]) -> dict[str, Any]:
        """The columns to set for ``patch``, each value validated as its field's type."""
        values: dict[str, Any] = {}
        for field, value in patch.items():
            if field in frozen or field not in self.model.model_fields:
                raise ValueError(f"{self.model.__name__}.{field} cannot be patched")
            adapter = self._adapters.get(field)
            if adapter is None:
                annotation = self.model.model_fields[field].annotation
                assert annotation is not None
                adapter = self._adapters[field] = TypeAdapter(annotation)
            values[field] = adapter.validate_python(value)
        row = {f: self._column_value(f, v) for f, v in values.items()}
        if self.derive:
            row.update(self.derive(values))
        return row

    def load(self, row: sa.Row[Any]) -> M:
        return self.model.model_validate(row._asdict())

"""Set or add columns of an Arrow table by schema field (a new table; the input is unchanged)."""

from __future__ import annotations

import pyarrow as pa


def column_lists(table: pa.Table, names) -> dict[str, list]:
    """The named columns of `table` as Python lists, by name."""
    return {name: table.column(name).to_pylist() for name in names}


def put_columns(table: pa.Table, values: dict[str, list], fields: list[pa.Field]) -> pa.Table:
    """`table` with each named field set to its values: replaced where the column exists, appended otherwise."""
    out = table
    by_name = {f.name: f for f in fields}
    for name, column in values.items():
        field = by_name[name]
        array = pa.array(column, type=field.type)
        index = out.schema.get_field_index(name)
        out = out.set_column(index, field, array) if index >= 0 else out.append_column(field, array)
    return out

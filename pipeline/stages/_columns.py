"""Set or add columns of an Arrow table by schema field (a new table; the input is unchanged), and
move raw pixel bytes between NumPy and Arrow without a copy per row."""

from __future__ import annotations

import numpy as np
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


def list_column(matrix: np.ndarray, type: pa.DataType) -> pa.Array:
    """An Arrow list array with one row per row of a 2-d array, from its buffer (no Python floats)."""
    n, d = matrix.shape
    large = pa.types.is_large_list(type)
    offsets = pa.array(np.arange(n + 1, dtype=np.int64 if large else np.int32) * d)
    values = pa.array(np.ascontiguousarray(matrix).reshape(-1), type=type.value_type)
    return (pa.LargeListArray if large else pa.ListArray).from_arrays(offsets, values, type=type)


def binary_column(rows: list[np.ndarray], type: pa.DataType = pa.binary()) -> pa.Array:
    """An Arrow binary array with each row's bytes (uint8 arrays), built with one copy at most.

    Rows that lie one after another in one array (a batch's images, in order) are used in place.
    `pa.array([a.tobytes() for a in rows])` copies twice, through a Python object per row, while
    a GPU worker's device waits (`bench/pixel_copies.py`; bench/README.md, sixth session)."""
    data = _one_span(rows)
    if data is None:
        data = np.concatenate([np.ascontiguousarray(a).reshape(-1) for a in rows]) if rows else np.empty(0, np.uint8)
    large = pa.types.is_large_binary(type)
    if not large and data.nbytes > np.iinfo(np.int32).max:
        raise ValueError(f"{data.nbytes} bytes of pixels in one batch: over Arrow's 2 GiB for one binary "
                         "array; lower the stage's batch_size")
    offsets = np.zeros(len(rows) + 1, np.int64 if large else np.int32)
    np.cumsum([a.nbytes for a in rows], out=offsets[1:])
    return pa.Array.from_buffers(type, len(rows), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _one_span(rows: list[np.ndarray]) -> np.ndarray | None:
    """The bytes `rows` cover when they lie one after another in one C-contiguous uint8 array (a
    batch's images in order, as the generator decodes them): used in place, without a copy."""
    if not rows:
        return None
    base = rows[0]
    while isinstance(base.base, np.ndarray):
        base = base.base
    if base.dtype != np.uint8 or not base.flags.c_contiguous:
        return None
    flat = base.reshape(-1)
    start = end = rows[0].ctypes.data - flat.ctypes.data
    for row in rows:
        if row.dtype != np.uint8 or not row.flags.c_contiguous or row.ctypes.data - flat.ctypes.data != end:
            return None
        end += row.nbytes
    return flat[start:end] if 0 <= start and end <= flat.nbytes else None


def binary_views(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """Each row of a binary column as a read-only uint8 view of Arrow's buffer (no copy)."""
    out: list[np.ndarray] = []
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        if chunk.null_count:
            raise ValueError(f"a binary column has {chunk.null_count} null rows")
        _, offsets, data = chunk.buffers()
        kind = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        ends = np.frombuffer(offsets, kind)[chunk.offset:chunk.offset + len(chunk) + 1]
        values = np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8)
        out.extend(values[start:end] for start, end in zip(ends[:-1].tolist(), ends[1:].tolist()))
    return out

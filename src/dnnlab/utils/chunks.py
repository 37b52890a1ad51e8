"""Working-memory arithmetic, written once (as scikit-learn's get_chunk_n_rows)."""

from __future__ import annotations


def chunk_rows(row_elems: int, max_elems: int) -> int:
    """Rows per chunk so that a chunk of rows of `row_elems` elements each holds at most
    `max_elems` elements; at least one row."""
    return max(1, int(max_elems) // max(int(row_elems), 1))


def row_chunks(n: int, rows: int):
    """(start, stop) of consecutive chunks of `rows` rows covering range(n)."""
    for start in range(0, n, rows):
        yield start, min(start + rows, n)

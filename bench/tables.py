"""The one table layout every benchmark prints: measure, value, ratio."""

from __future__ import annotations


def format_table(rows: list[tuple[str, str, str]], value_width: int | None = None) -> str:
    """Rows of (measure, value, ratio) under a header; values right-aligned in `value_width`
    columns, or in the widest value's."""
    width = max(len(r[0]) for r in rows)
    value = value_width or max(len(r[1]) for r in rows)
    lines = [f"{'measure':<{width}}  {'value':>{value}}  ratio"]
    lines += [f"{name:<{width}}  {v:>{value}}  {ratio}".rstrip() for name, v, ratio in rows]
    return "\n".join(lines)

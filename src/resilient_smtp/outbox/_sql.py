"""SQL text the two outbox stores build the same way.

The stores keep their own dialects (placeholders, type checks, ``NaN``);
what they share is the shape of a status query, written once here.
"""

from __future__ import annotations

__all__ = ["latest"]


def latest(column: str, *same: str, where: str = "", equal: str) -> str:
    """A correlated subquery: ``column`` of the most recently updated
    recipient row ``i`` that agrees with the outer row ``o`` on every
    column in ``same`` (and satisfies ``where``).

    ``equal`` is the dialect's NULL-safe equality: ``IS`` in SQLite,
    ``IS NOT DISTINCT FROM`` in PostgreSQL (a NULL destination or reason
    is a group of its own)."""
    conditions = [where] if where else []
    conditions += [f"i.{name} {equal} o.{name}" for name in same]
    return (
        f"(SELECT {column} FROM outbox_recipients i WHERE {' AND '.join(conditions)} "
        "ORDER BY updated DESC LIMIT 1)"
    )

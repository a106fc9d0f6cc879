"""The ``canaries`` table: shop-owned numbers planted as fake customers (bridged.canaries). The number is
kept as its keyed hash and its last two digits only."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime

from .base import Aggregate, unavailable_as_one_type

_COLUMNS = "id, number_key, last_digits, key_check, manager_id, team, order_id, note, created_at, created_by"


@dataclass(frozen=True)
class CanaryRow:
    id: str
    number_key: str
    last_digits: str
    key_check: str
    manager_id: str | None
    team: str | None
    order_id: str
    note: str | None
    created_at: datetime
    created_by: str


class CanaryExists(Exception):
    """A canary with this id or this number is registered already."""


@unavailable_as_one_type
class Canaries(Aggregate):
    async def all(self) -> list[CanaryRow]:
        rows = await self.pool.fetch(f"SELECT {_COLUMNS} FROM canaries ORDER BY created_at, id")
        return [CanaryRow(**dict(r)) for r in rows]

    async def add(self, row: CanaryRow) -> CanaryRow:
        """Register the canary and its audit row (``canary.create``: never the number's digits but the last
        two) in one statement; raises CanaryExists for an id or a number taken."""
        values = asdict(row)
        details = {k: values[k] for k in ("manager_id", "team", "order_id", "last_digits")}
        created = await self.pool.fetchrow(
            "WITH c AS (INSERT INTO canaries (id, number_key, last_digits, key_check, manager_id, team,"
            " order_id, note, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            f" ON CONFLICT DO NOTHING RETURNING {_COLUMNS}),"
            " a AS (INSERT INTO audit (actor, action, order_id, outcome, details)"
            " SELECT $9, 'canary.create', c.order_id, 'created',"
            " $10::jsonb || jsonb_build_object('canary', c.id) FROM c) SELECT * FROM c",
            row.id,
            row.number_key,
            row.last_digits,
            row.key_check,
            row.manager_id,
            row.team,
            row.order_id,
            row.note,
            row.created_by,
            json.dumps(details),
        )
        if created is None:
            raise CanaryExists(row.id)
        return CanaryRow(**dict(created))

    async def delete(self, canary_id: str, *, actor: str) -> bool:
        """Unregister the canary, audited (``canary.delete``) in the same statement; False if unknown."""
        deleted = await self.pool.fetchval(
            "WITH c AS (DELETE FROM canaries WHERE id = $1 RETURNING id, order_id)"
            " INSERT INTO audit (actor, action, order_id, outcome, details)"
            " SELECT $2, 'canary.delete', c.order_id, 'deleted', jsonb_build_object('canary', c.id) FROM c"
            " RETURNING id",
            canary_id,
            actor,
        )
        return deleted is not None

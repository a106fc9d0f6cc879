"""The ``call_links`` table: what each signed click-to-call link did, so that it places at most one call.

Claimed before the call is placed and settled after, as an Idempotency-Key is (bridged.api.idempotency):
a link opened again, or twice at once, is answered with the first opening's call (or the call it tried);
after a refusal that rang nobody the row is released and the link may be opened again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .base import Aggregate, unavailable_as_one_type

# A row is kept until its link has expired (so a replay can never ring again) and its capability is
# void (the page follows the call for this long after placing it).
CAPABILITY_HOURS = 24


@dataclass(frozen=True)
class LinkUse:
    """An earlier opening of a link: the call it placed, or the answer it got (status None: still being
    placed)."""

    order_id: str
    manager_id: str
    call_id: str | None
    status: int | None
    response: Any


def _use(row: Any) -> LinkUse:
    response = row["response"]
    return LinkUse(
        order_id=row["order_id"],
        manager_id=row["manager_id"],
        call_id=row["call_id"],
        status=row["status"],
        response=json.loads(response) if isinstance(response, str) else response,
    )


_USE_COLUMNS = "order_id, manager_id, call_id, status, response"


@unavailable_as_one_type
class CallLinks(Aggregate):
    async def claim(
        self, sig_hash: str, *, order_id: str, manager_id: str, expires_at: datetime, capability_hash: str
    ) -> LinkUse | None:
        """Claim the link for placing its call: None when this is its first opening (go ahead), else
        the earlier one. Rows past their use are deleted first."""
        async with self.pool.acquire() as conn:
            await conn.execute(
                "DELETE FROM call_links WHERE expires_at < now()"
                " AND created_at < now() - make_interval(hours => $1)",
                CAPABILITY_HOURS,
            )
            inserted = await conn.fetchval(
                "INSERT INTO call_links (sig_hash, order_id, manager_id, expires_at, capability_hash)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true",
                sig_hash,
                order_id,
                manager_id,
                expires_at,
                capability_hash,
            )
            if inserted:
                return None
            row = await conn.fetchrow(f"SELECT {_USE_COLUMNS} FROM call_links WHERE sig_hash = $1", sig_hash)
        return None if row is None else _use(row)  # None: deleted between the two statements

    async def settle(self, sig_hash: str, *, status: int, response: Any, call_id: str | None) -> None:
        """The first opening's answer: the call it placed, or the refusal it got."""
        await self.pool.execute(
            "UPDATE call_links SET status = $2, response = $3::jsonb, call_id = $4 WHERE sig_hash = $1",
            sig_hash,
            status,
            json.dumps(response),
            call_id,
        )

    async def release(self, sig_hash: str) -> None:
        """The first opening got no answer worth keeping (bridged could not place the call now): the
        link may be opened again until it expires."""
        await self.pool.execute("DELETE FROM call_links WHERE sig_hash = $1 AND status IS NULL", sig_hash)

    async def find(self, sig_hash: str) -> LinkUse | None:
        row = await self.pool.fetchrow(f"SELECT {_USE_COLUMNS} FROM call_links WHERE sig_hash = $1", sig_hash)
        return None if row is None else _use(row)

    async def by_capability(self, capability_hash: str) -> LinkUse | None:
        """The link a page's capability belongs to, while the capability is valid."""
        row = await self.pool.fetchrow(
            f"SELECT {_USE_COLUMNS} FROM call_links WHERE capability_hash = $1"
            " AND created_at > now() - make_interval(hours => $2)",
            capability_hash,
            CAPABILITY_HOURS,
        )
        return None if row is None else _use(row)

"""bridged's own PostgreSQL, one class per aggregate, each with its own SQL (hand-written, ``$n``
parameters, explicit column lists): ``store.calls``, ``store.audit``, ``store.idempotency``,
``store.outbox``, ``store.settings``, ``store.links``, ``store.sticky`` (who last talked to an inbound
caller), ``store.leases``, ``store.attempts`` (managers' call attempts, the budgets), ``store.canaries``.
Every public method raises :class:`~bridged.store.base.DatabaseUnavailable` for an outage, whatever
asyncpg raised.
"""

from __future__ import annotations

from ..db import Pool
from .attempts import ManagerAttempts
from .audit import AuditTrail
from .callers import StickyCallers
from .calls import CallRows
from .canaries import Canaries
from .idempotency import IdempotencyKeys
from .leases import AppLeases
from .links import CallLinks
from .outbox import WebhookOutbox
from .settings import Settings


class Store:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.calls = CallRows(pool)
        self.audit = AuditTrail(pool)
        self.idempotency = IdempotencyKeys(pool)
        self.outbox = WebhookOutbox(pool)
        self.settings = Settings(pool)
        self.links = CallLinks(pool)
        self.leases = AppLeases(pool)
        self.sticky = StickyCallers(pool)
        self.attempts = ManagerAttempts(pool)
        self.canaries = Canaries(pool)

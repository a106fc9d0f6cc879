-- bridged: no transaction
-- The retention purge (bridged.store.outbox: deliveries done 30 days ago) read the whole table for the
-- rows it deletes: a month of deliveries each day, and every delivery ever made on its first pass after
-- an upgrade. On the purge's expression exactly. Not partial (WHERE ... IS NOT NULL): PostgreSQL keeps
-- statistics of a partial index's expression but does not use them, and the purge's rows were then
-- guessed at a third of the table (7,333 for 400 on 22,000 rows, EXPLAIN on the rig's PostgreSQL); the
-- rows still due, in it as NULLs, are few. Built concurrently (see 0012): the call workers and the
-- dispatcher write webhook_outbox on every call state change.
DROP INDEX CONCURRENTLY IF EXISTS webhook_outbox_done_idx;
CREATE INDEX CONCURRENTLY webhook_outbox_done_idx ON webhook_outbox ((coalesce(delivered_at, failed_at)));

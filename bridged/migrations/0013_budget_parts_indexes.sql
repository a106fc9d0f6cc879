-- bridged: no transaction
-- Built CONCURRENTLY, each dropped first: see 0012.
-- The budgets' window read (bridged.store.attempts) reads each budget's part on its own, bounded by the
-- budget: the newest accepted calls, and each order's last attempt. On manager_attempts_counted_idx both
-- went through every probing refusal of the window (a manager trying unknown orders with
-- refused_in_a_row off adds one per attempt, without end) to find the rows they need.
DROP INDEX CONCURRENTLY IF EXISTS manager_attempts_accepted_idx;
CREATE INDEX CONCURRENTLY manager_attempts_accepted_idx ON manager_attempts (manager_id, at DESC)
    WHERE outcome = 'accepted';
-- Rows naming an order (accepted, denied, invalid_phone): grouped by order without going through the
-- unknown orders and malformed codes, which name none.
DROP INDEX CONCURRENTLY IF EXISTS manager_attempts_orders_idx;
CREATE INDEX CONCURRENTLY manager_attempts_orders_idx ON manager_attempts (manager_id, at DESC) INCLUDE (order_id, outcome)
    WHERE order_id IS NOT NULL;

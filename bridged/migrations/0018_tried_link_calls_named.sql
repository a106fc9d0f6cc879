-- A signed link whose call was tried (409 manager_unavailable: the call went ahead and its manager's phone
-- could not be rung) kept the answer, which names the call in details.call_id, but not the call itself:
-- opening the link again told the refusal again, and its capability followed nothing. bridged now keeps
-- that call as it keeps a placed one (bridged.api.idempotency.call_named), and a link opened again shows
-- it ended; the rows an older bridged kept get their call here. A daemon of the older version still
-- serving during a rolling upgrade answers such a link as before until it is upgraded.
UPDATE call_links SET call_id = response -> 'error' -> 'details' ->> 'call_id'
 WHERE call_id IS NULL AND response -> 'error' ->> 'id' = 'manager_unavailable';

-- An Idempotency-Key, and a signed link, kept every 4xx refusal but 429 as its answer for good: a retry
-- with the key after the manager's phone registered (409 manager_not_registered), or after the order
-- reached the shop's database (404 unknown_order), got the refusal again until the key (or the link)
-- expired. bridged now keeps only the answer to a request that had an effect
-- (bridged.api.idempotency.final): the call placed (2xx) or tried (409 manager_unavailable, which names
-- the call). The other refusals an older bridged kept dialled nobody and are freed here, so the next retry
-- is a new attempt. Rows still
-- being handled (status NULL) stay. A daemon of the older version still serving during a rolling upgrade
-- may keep such a refusal again until it is upgraded.
DELETE FROM idempotency_keys
 WHERE status IS NOT NULL AND status NOT BETWEEN 200 AND 299
   AND response -> 'error' ->> 'id' IS DISTINCT FROM 'manager_unavailable';
DELETE FROM call_links
 WHERE status IS NOT NULL AND status NOT BETWEEN 200 AND 299
   AND response -> 'error' ->> 'id' IS DISTINCT FROM 'manager_unavailable';

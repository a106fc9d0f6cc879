-- A 429 rate_limited was kept as an Idempotency-Key's answer (and, before bridged kept a link's 429 no
-- more, as a signed link's): a retry with the key after the Retry-After it was given got the 429 again
-- until the key expired. bridged now keeps only a final answer (bridged.api.idempotency.final: a 429, a
-- 5xx or any answer with Retry-After frees the key); the 429s an older bridged kept are freed here. No
-- other kept answer had Retry-After, and a 5xx was never kept. A daemon of the older version still
-- serving during a rolling upgrade may keep a 429 again until it is upgraded.
DELETE FROM idempotency_keys WHERE status = 429;
DELETE FROM call_links WHERE status = 429;

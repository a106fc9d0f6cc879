-- Reserved: main numbers the inbound calls' migration 0009 (issue 13). This placeholder keeps the numbers
-- contiguous on this branch until that merge, which replaces it.
SELECT 1;

-- Reserved: issue 16 (two daemons, several nodes) numbers its migration 0010. This placeholder keeps the
-- numbers contiguous on this branch until that merge, which replaces it.
SELECT 1;

-- One name for one state: a call whose manager hears why it did not go ahead, before the hangup, is "ending"
-- in its row too (the HTTP API and the webhooks always called it so; the rows said "refusing").
UPDATE calls SET state = 'ending' WHERE state = 'refusing';

-- Several daemons (one Stasis application each) may share one database: each adopts only its own
-- calls after a restart.
ALTER TABLE calls ADD COLUMN ari_app text;
CREATE INDEX calls_open_app_idx ON calls (ari_app) WHERE state <> 'ended';

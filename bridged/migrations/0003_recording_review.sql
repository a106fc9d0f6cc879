-- Ops review (issue 4): recordings purged by retention keep their call row, and the retention chosen by an
-- admin outlives restarts.
ALTER TABLE calls ADD COLUMN recording_purged_at timestamptz;

-- Recordings the retention task may have to delete, oldest first.
CREATE INDEX calls_recording_live_idx ON calls (requested_at)
    WHERE recording_name IS NOT NULL AND recording_purged_at IS NULL;

-- Settings changed at run time through the API (key -> JSON value); absent = the config file's default.
CREATE TABLE settings (
    key         text PRIMARY KEY,
    value       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text NOT NULL
);

-- The audit list is filtered by actor or action, newest first.
CREATE INDEX audit_actor_idx ON audit (actor, at DESC, id DESC);
CREATE INDEX audit_action_idx ON audit (action, at DESC, id DESC);

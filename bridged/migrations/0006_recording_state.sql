-- Whether a call's recording holds the whole conversation: complete, truncated (the file stops early: disk
-- full, folder not writable) or failed (nothing usable). NULL while not known or when the call was not
-- recorded.
ALTER TABLE calls ADD COLUMN recording_state text;

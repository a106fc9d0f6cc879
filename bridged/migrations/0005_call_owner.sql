-- Calls placed over HTTP belong to the API client (token name) that placed them: a shop token reads and
-- ends only its own calls. NULL for calls a manager dialled from the phone.
ALTER TABLE calls ADD COLUMN created_by text;

-- Insertion order of plugin versions, and component blobs in the database
-- so that every replica reads them.
ALTER TABLE plugin_versions ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
CREATE TABLE blobs (
    digest  TEXT PRIMARY KEY,
    bytes   BYTEA NOT NULL
);

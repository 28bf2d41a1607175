-- Insertion order of plugin versions without SQLite's implicit rowid, so
-- that the same queries run on PostgreSQL; and component blobs in the
-- database (used by the PostgreSQL backend, where every replica reads them).
ALTER TABLE plugin_versions ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
UPDATE plugin_versions SET seq = rowid;
CREATE TABLE blobs (
    digest  TEXT PRIMARY KEY,
    bytes   BLOB NOT NULL
);

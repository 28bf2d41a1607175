CREATE TABLE kv (
    plugin  TEXT NOT NULL,
    key     TEXT NOT NULL,
    value   BYTEA NOT NULL,
    PRIMARY KEY (plugin, key)
);

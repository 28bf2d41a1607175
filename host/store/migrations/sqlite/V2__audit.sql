CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms       INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    plugin      TEXT,
    version     TEXT,
    invocation  TEXT,
    capability  TEXT NOT NULL,
    target      TEXT NOT NULL,
    verb        TEXT NOT NULL,
    allowed     INTEGER NOT NULL,
    outcome     TEXT NOT NULL
);
CREATE INDEX audit_by_plugin ON audit (plugin, id);

CREATE TABLE leases (
    name           TEXT PRIMARY KEY,
    holder         TEXT NOT NULL,
    token          INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL
);

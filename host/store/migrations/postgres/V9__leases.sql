CREATE TABLE leases (
    name           TEXT PRIMARY KEY,
    holder         TEXT NOT NULL,
    token          BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL
);

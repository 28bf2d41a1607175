-- Notification channels and their durable outbox. A channel is a spec (JSON)
-- naming secrets, never holding them. A delivery is written before anything
-- is sent; (project, idem_key) is unique, so a retried enqueue returns the
-- same delivery. `payload` is the text actually sent when the delivery
-- carries a batch; the batched ones point to it (`batched_into`). Every
-- attempt is a row with the provider's answer; the attempts of the last
-- minute are also the channel's rate window.
CREATE TABLE notify_channels (
    name        TEXT PRIMARY KEY,
    project     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    source      TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    updated_by  TEXT NOT NULL
);
CREATE TABLE notify_deliveries (
    id              TEXT PRIMARY KEY,
    project         TEXT NOT NULL,
    idem_key        TEXT NOT NULL,
    channel         TEXT NOT NULL,
    kind            TEXT NOT NULL,
    plugin          TEXT,
    format          TEXT NOT NULL,
    body            TEXT NOT NULL,
    payload         TEXT,
    status          TEXT NOT NULL,
    batched_into    TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER,
    test            INTEGER NOT NULL DEFAULT 0,
    created_ms      INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL,
    sent_ms         INTEGER,
    last_error      TEXT,
    UNIQUE (project, idem_key)
);
CREATE INDEX notify_deliveries_due ON notify_deliveries (status, next_attempt_ms);
CREATE INDEX notify_deliveries_by_channel ON notify_deliveries (channel, created_ms);
CREATE INDEX notify_deliveries_by_batch ON notify_deliveries (batched_into);
CREATE TABLE notify_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery    TEXT NOT NULL,
    channel     TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    batch_size  INTEGER NOT NULL,
    started_ms  INTEGER NOT NULL,
    finished_ms INTEGER,
    outcome     TEXT NOT NULL,
    http_status INTEGER,
    code        TEXT,
    message     TEXT,
    response    TEXT
);
CREATE INDEX notify_attempts_by_delivery ON notify_attempts (delivery, attempt);
CREATE INDEX notify_attempts_window ON notify_attempts (channel, started_ms);

-- Deploy pipelines: the current revision of each pipeline and every
-- revision's YAML; runs with their journaled state (the machine's `Run` as
-- JSON), the plugin versions they pinned and when they next need waking;
-- each run's inbox of events not yet applied; its log; the queues of
-- environment locks; and webhook deliveries already seen.
CREATE TABLE pipelines (
    name        TEXT PRIMARY KEY,
    project     TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    source      TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    updated_by  TEXT NOT NULL
);
CREATE TABLE pipeline_revisions (
    name        TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    yaml        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    PRIMARY KEY (name, revision)
);
CREATE TABLE runs (
    id          TEXT PRIMARY KEY,
    pipeline    TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    project     TEXT NOT NULL,
    status      TEXT NOT NULL,
    record      TEXT NOT NULL,
    pins        TEXT NOT NULL,
    wakeup_ms   INTEGER,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL,
    finished_ms INTEGER
);
CREATE INDEX runs_by_pipeline ON runs (pipeline, created_ms);
CREATE INDEX runs_by_status ON runs (status, wakeup_ms);
CREATE TABLE run_inbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  TEXT NOT NULL,
    event   TEXT NOT NULL,
    at_ms   INTEGER NOT NULL
);
CREATE INDEX run_inbox_by_run ON run_inbox (run_id, id);
CREATE TABLE run_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  TEXT NOT NULL,
    step    TEXT,
    source  TEXT NOT NULL,
    message TEXT NOT NULL,
    at_ms   INTEGER NOT NULL
);
CREATE INDEX run_log_by_run ON run_log (run_id, id);
CREATE TABLE env_locks (
    environment TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    policy      TEXT NOT NULL,
    holder      INTEGER NOT NULL DEFAULT 0,
    queued_ms   INTEGER NOT NULL,
    PRIMARY KEY (environment, run_id)
);
CREATE TABLE webhook_deliveries (
    provider    TEXT NOT NULL,
    delivery    TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (provider, delivery)
);

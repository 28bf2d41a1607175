-- Alerts: Alertmanager webhook deliveries (groups) stored raw before the
-- answer, each alert of a group once per (group key, fingerprint, status,
-- startsAt) (the dedupe: a unique key, not memory), routes from the API,
-- the actions handler plugins asked for with their outcome, the silences
-- made per fingerprint, and remediation claims per alert episode.
CREATE TABLE alert_groups (
    id           TEXT PRIMARY KEY,
    receiver     TEXT NOT NULL,
    group_key    TEXT NOT NULL,
    status       TEXT NOT NULL,
    shard        BIGINT NOT NULL,
    payload      TEXT NOT NULL,
    alerts       BIGINT NOT NULL,
    new_alerts   BIGINT NOT NULL,
    state        TEXT NOT NULL,
    projects     TEXT NOT NULL DEFAULT '',
    note         TEXT NOT NULL DEFAULT '',
    received_ms  BIGINT NOT NULL,
    processed_ms BIGINT
);
CREATE INDEX alert_groups_pending ON alert_groups (state, shard, received_ms);
CREATE INDEX alert_groups_by_time ON alert_groups (received_ms);
CREATE TABLE alert_events (
    group_key    TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    status       TEXT NOT NULL,
    starts_at    TEXT NOT NULL,
    group_id     TEXT NOT NULL,
    alertname    TEXT NOT NULL,
    labels       TEXT NOT NULL,
    received_ms  BIGINT NOT NULL,
    PRIMARY KEY (group_key, fingerprint, status, starts_at)
);
CREATE INDEX alert_events_by_group ON alert_events (group_id);
CREATE INDEX alert_events_by_time ON alert_events (received_ms);
CREATE TABLE alert_routes (
    name        TEXT PRIMARY KEY,
    project     TEXT NOT NULL,
    spec        TEXT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    updated_by  TEXT NOT NULL
);
CREATE TABLE alert_actions (
    id          TEXT PRIMARY KEY,
    group_id    TEXT NOT NULL,
    route       TEXT NOT NULL,
    plugin      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    target      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    detail      TEXT NOT NULL,
    attempts    BIGINT NOT NULL,
    created_ms  BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL
);
CREATE INDEX alert_actions_by_group ON alert_actions (group_id);
CREATE TABLE alert_silences (
    fingerprint  TEXT NOT NULL,
    matchers     TEXT NOT NULL,
    silence_id   TEXT NOT NULL,
    alertmanager TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    expired_ms   BIGINT,
    PRIMARY KEY (fingerprint, matchers)
);
CREATE INDEX alert_silences_by_id ON alert_silences (silence_id);
CREATE TABLE alert_remediations (
    episode      TEXT NOT NULL,
    pipeline     TEXT NOT NULL,
    holder       TEXT NOT NULL,
    claimed_until_ms BIGINT NOT NULL,
    run_id       TEXT,
    created_ms   BIGINT NOT NULL,
    PRIMARY KEY (episode, pipeline)
);

-- Cron triggers of pipelines: for each (pipeline, trigger), the due time it
-- last fired for. A firing moves the mark in the same transaction that
-- creates its run, and only from the value the scheduler read, so a due
-- time fires once across replicas and restarts. `trigger_key` is
-- `<index>:<schedule>@<timezone>`: a changed schedule starts afresh.
CREATE TABLE cron_marks (
    pipeline    TEXT NOT NULL,
    trigger_key TEXT NOT NULL,
    last_due_ms INTEGER NOT NULL,
    PRIMARY KEY (pipeline, trigger_key)
);
CREATE INDEX webhook_deliveries_by_time ON webhook_deliveries (received_ms);

ALTER TABLE secrets ADD COLUMN format BIGINT NOT NULL DEFAULT 0;
CREATE TABLE secrets_key_check (
    id          BIGINT PRIMARY KEY CHECK (id = 1),
    nonce       BYTEA NOT NULL,
    ciphertext  BYTEA NOT NULL
);

ALTER TABLE secrets ADD COLUMN format INTEGER NOT NULL DEFAULT 0;
CREATE TABLE secrets_key_check (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL
);

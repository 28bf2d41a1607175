//! API authentication and authorisation (bearer tokens with roles).

/// Table of API tokens (hashed).
pub const SCHEMA: &str = r#"
CREATE TABLE api_tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
"#;

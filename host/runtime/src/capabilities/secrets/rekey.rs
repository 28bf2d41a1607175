//! What ties the key to the database: sealing a value to its secret's name
//! (AEAD associated data), the key check that tells a wrong key from a right
//! one before any secret is read, the one-time upgrade of rows written
//! before names were bound, and the re-encryption a key rotation does.

use crate::store::args;
use crate::store::sql::{Conn, DbError};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};

use super::key::{KeyBytes, KeyError};

/// Rows bound to their name.
pub const FORMAT_BOUND: i64 = 1;
const FORMAT_LEGACY: i64 = 0;
const CHECK_AAD: &[u8] = b"capstan:secrets-key-check";
const CHECK_PLAIN: &[u8] = b"capstan secrets key check v1";

/// The associated data of a secret's ciphertext.
pub fn aad(name: &str) -> Vec<u8> {
    format!("capstan:secret:v1:{name}").into_bytes()
}

/// An AES-256-GCM cipher for `key`.
pub fn cipher(key: &KeyBytes) -> Aes256Gcm {
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key))
}

/// Encrypts `plain` with a fresh nonce; returns (nonce, ciphertext).
pub fn seal(cipher: &Aes256Gcm, aad: &[u8], plain: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let nonce: [u8; 12] = rand::random();
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
        .expect("AES-GCM encryption of a bounded value cannot fail");
    (nonce.to_vec(), ct)
}

/// Decrypts, or `None` if the key, the nonce, the data or `aad` is wrong.
pub fn open(cipher: &Aes256Gcm, nonce: &[u8], ct: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    if nonce.len() != 12 {
        return None;
    }
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .ok()
}

struct Row {
    name: String,
    nonce: Vec<u8>,
    ct: Vec<u8>,
    format: i64,
}

fn rows(conn: &mut Conn) -> Result<Vec<Row>, DbError> {
    conn.rows(
        "SELECT name, nonce, ciphertext, format FROM secrets ORDER BY name",
        args![],
    )?
    .iter()
    .map(|r| {
        Ok(Row {
            name: r.get(0)?,
            nonce: r.get(1)?,
            ct: r.get(2)?,
            format: r.get(3)?,
        })
    })
    .collect()
}

fn decrypt_row(cipher: &Aes256Gcm, row: &Row) -> Option<Vec<u8>> {
    let aad = if row.format == FORMAT_LEGACY {
        Vec::new()
    } else {
        aad(&row.name)
    };
    open(cipher, &row.nonce, &row.ct, &aad)
}

/// Whether any secret is stored (and so depends on a key).
pub fn has_secrets(conn: &mut Conn) -> Result<bool, DbError> {
    conn.value("SELECT EXISTS (SELECT 1 FROM secrets)", args![])
}

/// Whether `key` is the one the database was encrypted with (`None`: the
/// database has no key check yet).
pub fn key_matches(conn: &mut Conn, key: &KeyBytes) -> Result<Option<bool>, DbError> {
    let check: Option<(Vec<u8>, Vec<u8>)> = conn
        .row(
            "SELECT nonce, ciphertext FROM secrets_key_check WHERE id = 1",
            args![],
        )?
        .map(|r| Ok::<_, DbError>((r.get(0)?, r.get(1)?)))
        .transpose()?;
    Ok(check.map(|(n, c)| open(&cipher(key), &n, &c, CHECK_AAD).as_deref() == Some(CHECK_PLAIN)))
}

fn write_check(conn: &mut Conn, key: &KeyBytes) -> Result<(), DbError> {
    let (nonce, ct) = seal(&cipher(key), CHECK_AAD, CHECK_PLAIN);
    conn.exec(
        "INSERT INTO secrets_key_check (id, nonce, ciphertext) VALUES (1, ?1, ?2)
         ON CONFLICT(id) DO UPDATE SET nonce = ?1, ciphertext = ?2",
        args![nonce, ct],
    )?;
    Ok(())
}

/// Checks `key` against the database and prepares the database for it, in
/// one transaction: refuses a wrong key (while no secret is stored, any key
/// is right and becomes the checked one); on a database from before the key
/// check, accepts the key if it decrypts a stored secret and records the
/// check; re-encrypts rows written without associated data,
/// bound to their name. Returns how many rows were upgraded.
pub fn prepare(conn: &mut Conn, key: &KeyBytes, source_desc: &str) -> Result<usize, KeyError> {
    let upgraded = conn.tx(|tx| prepare_in(tx, key, source_desc))?;
    if upgraded > 0 {
        tracing::info!(
            secrets = upgraded,
            "re-encrypted secrets stored before names were bound to ciphertexts"
        );
    }
    Ok(upgraded)
}

fn prepare_in(tx: &mut Conn, key: &KeyBytes, source_desc: &str) -> Result<usize, KeyError> {
    let cipher = cipher(key);
    let all = rows(tx)?;
    match key_matches(tx, key)? {
        Some(true) => {}
        Some(false) if all.is_empty() => write_check(tx, key)?,
        Some(false) => {
            return Err(KeyError::WrongKey {
                source_desc: source_desc.into(),
            });
        }
        None => {
            if !all.is_empty() && !all.iter().any(|r| decrypt_row(&cipher, r).is_some()) {
                return Err(KeyError::WrongKey {
                    source_desc: source_desc.into(),
                });
            }
            write_check(tx, key)?;
        }
    }
    let mut upgraded = 0;
    for row in all.iter().filter(|r| r.format == FORMAT_LEGACY) {
        let Some(plain) = decrypt_row(&cipher, row) else {
            tracing::error!(secret = %row.name, "stored secret does not decrypt; left as it is (store it again)");
            continue;
        };
        let (nonce, ct) = seal(&cipher, &aad(&row.name), &plain);
        tx.exec(
            "UPDATE secrets SET nonce = ?2, ciphertext = ?3, format = ?4 WHERE name = ?1",
            args![row.name, nonce, ct, FORMAT_BOUND],
        )?;
        upgraded += 1;
    }
    Ok(upgraded)
}

/// Re-encrypts every secret and the key check from `old` to `new` in one
/// transaction, with `audit` (the record of the rotation) in the same one.
/// Any secret that does not decrypt aborts the whole rotation unchanged.
/// Returns how many secrets were re-encrypted.
pub fn reencrypt(
    conn: &mut Conn,
    old: &KeyBytes,
    new: &KeyBytes,
    audit: impl FnOnce(&mut Conn, usize) -> Result<(), DbError>,
) -> Result<usize, KeyError> {
    conn.tx(|tx| reencrypt_in(tx, old, new, audit))
}

fn reencrypt_in(
    tx: &mut Conn,
    old: &KeyBytes,
    new: &KeyBytes,
    audit: impl FnOnce(&mut Conn, usize) -> Result<(), DbError>,
) -> Result<usize, KeyError> {
    let (old_c, new_c) = (cipher(old), cipher(new));
    let all = rows(tx)?;
    for row in &all {
        let plain = decrypt_row(&old_c, row).ok_or_else(|| {
            KeyError::Secret(format!(
                "secret `{}` does not decrypt with the current key; nothing was changed \
                 (store it again or delete it, then rotate)",
                row.name
            ))
        })?;
        let (nonce, ct) = seal(&new_c, &aad(&row.name), &plain);
        tx.exec(
            "UPDATE secrets SET nonce = ?2, ciphertext = ?3, format = ?4 WHERE name = ?1",
            args![row.name, nonce, ct, FORMAT_BOUND],
        )?;
    }
    write_check(tx, new)?;
    audit(tx, all.len())?;
    Ok(all.len())
}

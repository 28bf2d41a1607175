//! Rebuilds the crate when a migration is added: `embed_migrations!` reads
//! the directories at compile time, and cargo tracks only the files it saw.

fn main() {
    println!("cargo:rerun-if-changed=migrations/sqlite");
    println!("cargo:rerun-if-changed=migrations/postgres");
}

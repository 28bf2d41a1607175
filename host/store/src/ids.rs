//! Identifiers that stay unique across restarts and replicas: UUIDv7
//! (time-ordered, 74 random bits), written in the usual hyphenated form.

/// A new time-ordered unique id, e.g. `01938f6e-7c1a-7d2e-9b1f-4a6c2e8d0f13`.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_unique_and_time_ordered() {
        let ids: Vec<String> = (0..1000).map(|_| super::new_id()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
        assert_eq!(ids[0].len(), 36);
    }
}

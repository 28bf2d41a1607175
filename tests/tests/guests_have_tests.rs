//! Static check: every test guest is used by at least one test file.

#[test]
fn every_test_guest_is_exercised() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let sources: String = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.path().extension().is_some_and(|x| x == "rs")
                && !e.path().ends_with("guests_have_tests.rs")
        })
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    for (name, _) in capstan_tests::guests::ALL {
        let konst = format!("guests::{}", name.to_uppercase().replace('-', "_"));
        assert!(
            sources.contains(&konst),
            "test guest `{name}` is not used by any test (expected `{konst}`)"
        );
    }
}

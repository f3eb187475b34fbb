//! What the property tests of chat-core share.

use proptest::prelude::*;

/// `cases` cases (or `PROPTEST_CASES`), no seed file: a regression found
/// is fixed with a named test.
pub fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

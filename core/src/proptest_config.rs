//! The one config of the workspace's property tests (chat-core's, the
//! CLI's line parser's, the AMQP request decoder's), so that they all
//! honour `PROPTEST_CASES` the same way. Only built with the `proptest`
//! feature, which the crates enable for their tests.

use proptest::test_runner::Config as ProptestConfig;

/// `cases` cases (or `PROPTEST_CASES`), no seed file: a regression found
/// is fixed with a named test.
pub fn proptest_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

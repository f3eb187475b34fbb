//! loadgen: the instrument that turns two chats into a comparison.
//!
//! N synthetic clients drive either stack through `chat_core::ChatClient`,
//! the trait the CLIs use, so what is measured is what users run. Each
//! transport's bare ceiling ([`bare`]) runs in the same sweep, so every
//! chat figure can be read as a ratio to its transport's best.
//!
//! * [`scenario`]: one point, and experiment files that expand into many;
//! * [`driver`]: the synthetic clients (open and closed loop);
//! * [`probe`] and [`record`]: what each message carries and the exact
//!   accounting of loss, duplicates, order and latency;
//! * [`target`]: the servers, spawned or reached by URL;
//! * [`procstat`] and [`machine`]: CPU, memory, and where the run happened;
//! * [`run`] and [`output`]: orchestration and the CSV/histogram files.

pub mod bare;
pub mod driver;
pub mod machine;
pub mod merge;
pub mod output;
pub mod plot;
pub mod probe;
pub mod procstat;
pub mod record;
pub mod run;
pub mod scenario;
pub mod target;

//! How every binary ends: one line on stderr saying what happened, and the
//! exit status scripts and container healthchecks rely on.

use std::fmt::Display;
use std::process::ExitCode;

/// For `health` subcommands: `Ok(line)` prints the line and exits 0,
/// `Err(why)` prints `unhealthy: why` and exits 1.
pub fn health(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(line) => {
            eprintln!("{line}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("unhealthy: {why}");
            ExitCode::FAILURE
        }
    }
}

/// For servers: an error is logged and printed with its causes (`{:#}`,
/// which anyhow expands into "context: cause: ...") and exits 1.
pub fn server<E: Display>(program: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{program}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

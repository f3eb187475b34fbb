//! Logging setup shared by every binary: `tracing` to stderr, filtered by
//! `RUST_LOG` (default `info` for servers, `warn` for clients, so that the
//! chat itself owns stdout).

use tracing_subscriber::EnvFilter;

pub fn init(default_filter: &str) {
    init_quiet(default_filter, &[]);
}

/// [`init`], with the targets in `quiet` off unless `RUST_LOG` names them
/// (a library whose own error lines the program reports better itself).
pub fn init_quiet(default_filter: &str, quiet: &[&str]) {
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let given = std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or_default();
    for target in quiet {
        if !given.contains(target)
            && let Ok(off) = format!("{target}=off").parse()
        {
            filter = filter.add_directive(off);
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

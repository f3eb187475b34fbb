//! chat-cli: the application layer, everything about the process and the
//! terminal rather than the chat: the command-line client (flags, the line
//! parser, the REPL, the output), the servers' shared flags, exit statuses,
//! signals and logging setup.
//!
//! chat-core stays free of clap, rustyline and stdout; the binaries of both
//! transports are thin: parse flags, set up logging, call in here and into
//! their adapter.

pub mod args;
pub mod exit;
pub mod line;
pub mod server_args;
pub mod signal;
pub mod state_file;
pub mod telemetry;

mod commands;
mod connect;
mod demo;
mod input;
mod keeper;
mod output;
mod repl;
mod run;

pub use args::{ClientArgs, Command};
pub use run::run;
pub use server_args::ServerArgs;

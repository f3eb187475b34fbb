//! The server flags both transports share, and the [`ServerConfig`] they
//! describe. Core takes the config; only this layer knows about flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use chat_core::journal::Durability;
use chat_core::limits;
use chat_core::{Limits, ServerConfig};

/// The server flags both transports share (`--data-dir`, limits, durability).
#[derive(Clone, Debug, clap::Args)]
pub struct ServerArgs {
    /// Directory for log.txt and the state journal (created if missing).
    #[arg(long, env = "CHAT_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Largest accepted message text, in bytes.
    #[arg(long, env = "CHAT_MAX_TEXT_BYTES", default_value_t = limits::DEFAULT_MAX_TEXT_BYTES)]
    pub max_text_bytes: usize,
    /// Most undelivered messages kept for one recipient.
    #[arg(long, env = "CHAT_MAX_PENDING", default_value_t = limits::DEFAULT_MAX_PENDING)]
    pub max_pending: usize,
    /// Largest reply (one page of a client's history), in encoded bytes;
    /// histories are sent in pages that fit. Keep it under the clients'
    /// decoding limit (4 MiB for gRPC) and the broker's max_message_size.
    #[arg(long, env = "CHAT_MAX_REPLY_BYTES", default_value_t = limits::DEFAULT_MAX_REPLY_BYTES)]
    pub max_reply_bytes: usize,
    /// How many recently accepted message IDs are remembered to recognise
    /// a retried send (about 28 bytes of memory each).
    #[arg(long, env = "CHAT_DEDUPE_WINDOW", default_value_t = limits::DEFAULT_DEDUPE_WINDOW)]
    pub dedupe_window: usize,
    /// Bytes of undelivered messages kept in memory over all mailboxes;
    /// past it they wait only in log.txt and are read back when delivered.
    #[arg(long, env = "CHAT_MAILBOX_MEMORY", default_value_t = limits::DEFAULT_MAILBOX_MEMORY)]
    pub mailbox_memory: usize,
    /// `os`: answer once written to the OS (survives a server crash);
    /// `fsync`: also flush to disk (survives a machine crash).
    #[arg(long, env = "CHAT_DURABILITY", value_enum, default_value_t = DurabilityArg::Os)]
    pub durability: DurabilityArg,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0: any free
    /// port; the log says which). Off when not given.
    #[arg(long, env = "CHAT_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

/// `--durability` as the command line spells it; core's [`Durability`]
/// knows nothing of flags. The doc comments are the `--help` text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DurabilityArg {
    /// Written to the OS (survives a crash of the server process).
    #[default]
    Os,
    /// Also `fsync`ed (survives a crash of the machine; slower).
    Fsync,
}

impl From<DurabilityArg> for Durability {
    fn from(arg: DurabilityArg) -> Self {
        match arg {
            DurabilityArg::Os => Durability::Os,
            DurabilityArg::Fsync => Durability::Fsync,
        }
    }
}

impl ServerArgs {
    pub fn config(&self) -> ServerConfig {
        ServerConfig {
            data_dir: self.data_dir.clone(),
            limits: Limits {
                max_text_bytes: self.max_text_bytes,
                max_pending: self.max_pending,
                max_reply_bytes: self.max_reply_bytes,
                dedupe_window: self.dedupe_window,
                mailbox_memory: self.mailbox_memory,
            },
            durability: self.durability.into(),
        }
    }
}

//! The flags and one-shot subcommands every chat client shares; each
//! transport's binary flattens [`ClientArgs`] next to its connection flags.

/// The flags and subcommands every chat client shares.
#[derive(Clone, Debug, clap::Args)]
pub struct ClientArgs {
    /// Your client ID: 1-32 characters of A-Z, a-z, 0-9, '_' or '-'.
    /// Without it a unique ID is generated and printed.
    #[arg(long, env = "CHAT_ID", global = true)]
    pub id: Option<String>,

    /// The secret that proves your ID (1-128 visible ASCII characters). The
    /// first registration of an ID claims it with its secret. Without this
    /// flag a secret is generated once and kept in your state file
    /// ($XDG_STATE_HOME/chatbench/ or ~/.local/state/chatbench/).
    #[arg(long, env = "CHAT_SECRET", hide_env_values = true, global = true)]
    pub secret: Option<String>,

    /// Print every event as one JSON object per line on stdout.
    #[arg(long, env = "CHAT_JSON", global = true)]
    pub json: bool,

    /// Once PEER is registered, send it a short scripted conversation, then
    /// carry on as an ordinary interactive client.
    #[arg(long, env = "CHAT_DEMO", value_name = "PEER")]
    pub demo: Option<String>,

    /// How long one-shot commands keep retrying an unreachable server
    /// before giving up, in seconds (interactive use retries forever).
    #[arg(
        long,
        env = "CHAT_CONNECT_TIMEOUT",
        default_value_t = 15,
        global = true
    )]
    pub connect_timeout: u64,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// One-shot commands for scripts. Without one, the client is interactive.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// Send one message; exits once the server has accepted it.
    Send {
        /// Recipient client ID.
        to: String,
        /// Message text (several words are joined with spaces).
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// List every registered client with its online status.
    List,
    /// Show every message you have sent, oldest first.
    History,
    /// Go online and print incoming messages.
    Listen {
        /// Exit after this many messages.
        #[arg(long, env = "CHAT_LISTEN_COUNT")]
        count: Option<usize>,
        /// Exit after this many seconds (with an error if --count was not reached).
        #[arg(long, env = "CHAT_LISTEN_TIMEOUT")]
        timeout: Option<u64>,
    },
}

//! HTTP/2 keepalive: how either side notices a peer that went silent
//! without closing its connection.
//!
//! A frozen client process (SIGSTOP, a debugger, a paused VM) or one cut off
//! without a TCP reset keeps its connection, and with it its `Subscribe`
//! stream: its ID stays online, and nobody can take it back, until the
//! server notices. The server pings every connection that has been quiet
//! for [`Keepalive::interval`] and closes it when the ping is not answered
//! within [`Keepalive::timeout`]; the stream then ends and the ID shows
//! offline. With the defaults (5 s + 10 s) that takes at most about 15 s.
//! The client does the same towards the server, so that it reconnects
//! instead of waiting forever on a server that went silent.
//!
//! A ping costs a few bytes; an answer comes from the peer's HTTP/2 layer,
//! not from the application, so a busy but alive peer answers in time.

use std::time::Duration;

/// Default seconds of silence before a keepalive ping.
pub const DEFAULT_INTERVAL_SECS: u64 = 5;
/// Default seconds a ping may go unanswered before the connection is
/// closed. Twice the interval: a peer on a loaded machine or a slow link
/// gets time to answer, and a frozen one is still gone within ~15 s.
pub const DEFAULT_TIMEOUT_SECS: u64 = 10;

/// When to ping a quiet connection and how long to wait for the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence on a connection before a ping is sent.
    pub interval: Duration,
    /// Most time a ping may go unanswered before the connection is closed.
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(DEFAULT_INTERVAL_SECS),
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
        }
    }
}

/// The keepalive flags of `grpc-server` and `grpc-client`.
#[derive(Clone, Debug, clap::Args)]
pub struct KeepaliveArgs {
    /// Seconds a connection may be quiet before an HTTP/2 keepalive ping is
    /// sent to the peer. With --keepalive-timeout it bounds how long a
    /// frozen or vanished peer keeps its connection (server: its ID stays
    /// online; client: it waits before reconnecting).
    #[arg(
        long,
        env = "CHAT_KEEPALIVE_INTERVAL",
        value_name = "SECS",
        default_value_t = DEFAULT_INTERVAL_SECS,
        value_parser = clap::value_parser!(u64).range(1..=86_400),
        global = true
    )]
    pub keepalive_interval: u64,
    /// Seconds a keepalive ping may go unanswered before the connection is
    /// closed.
    #[arg(
        long,
        env = "CHAT_KEEPALIVE_TIMEOUT",
        value_name = "SECS",
        default_value_t = DEFAULT_TIMEOUT_SECS,
        value_parser = clap::value_parser!(u64).range(1..=86_400),
        global = true
    )]
    pub keepalive_timeout: u64,
}

impl KeepaliveArgs {
    pub fn keepalive(&self) -> Keepalive {
        Keepalive {
            interval: Duration::from_secs(self.keepalive_interval),
            timeout: Duration::from_secs(self.keepalive_timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        keepalive: KeepaliveArgs,
    }

    #[test]
    fn the_defaults_notice_a_silent_peer_within_about_15_s() {
        let k = Cli::try_parse_from(["x"]).unwrap().keepalive.keepalive();
        assert_eq!(k, Keepalive::default());
        assert!(k.interval + k.timeout <= Duration::from_secs(15));
    }

    #[test]
    fn zero_and_garbage_are_refused_with_the_flag_named() {
        for bad in ["0", "-1", "soon"] {
            let e = Cli::try_parse_from(["x".to_owned(), format!("--keepalive-interval={bad}")])
                .err()
                .expect(bad)
                .to_string();
            assert!(e.contains("--keepalive-interval"), "{e}");
        }
        let k = Cli::try_parse_from(["x", "--keepalive-interval", "1", "--keepalive-timeout", "2"])
            .unwrap()
            .keepalive
            .keepalive();
        assert_eq!(k.interval, Duration::from_secs(1));
        assert_eq!(k.timeout, Duration::from_secs(2));
    }
}

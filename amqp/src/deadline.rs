//! A time bound on every broker operation the server makes while it sets up.
//!
//! lapin waits for the broker's answer to a method (`connection.open`,
//! `channel.open`, `queue.declare`, `basic.consume`, ...) for as long as the
//! socket stays open. A broker that accepts TCP but never answers (stuck,
//! out of memory or disk, or not a RabbitMQ port at all) would leave the
//! server hanging at start without a word. Each step is therefore bounded by
//! [`op_timeout`] and fails with an error that says which step, on which
//! broker, and what to check; the server logs it at warn and retries with
//! backoff, as for a lost connection.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use crate::error::AmqpError;

/// Default bound of one broker operation at (re)start.
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variable that overrides [`OP_TIMEOUT`], in milliseconds (read
/// once per process). For tests, which cannot wait 30 s; 0 or garbage keeps
/// the default.
pub const OP_TIMEOUT_ENV: &str = "CHAT_AMQP_OP_TIMEOUT_MS";

/// The bound in force: [`OP_TIMEOUT`] unless [`OP_TIMEOUT_ENV`] says otherwise.
pub fn op_timeout() -> Duration {
    static BOUND: OnceLock<Duration> = OnceLock::new();
    *BOUND.get_or_init(|| {
        std::env::var(OP_TIMEOUT_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .map_or(OP_TIMEOUT, Duration::from_millis)
    })
}

/// Runs `op` within `bound`; `what` names the step ("declaring queue X")
/// and `url` (already redacted) the broker, for the timeout's message.
pub async fn bounded<T, E: Into<AmqpError>>(
    what: impl Into<String>,
    url: &str,
    bound: Duration,
    op: impl Future<Output = Result<T, E>>,
) -> Result<T, AmqpError> {
    match tokio::time::timeout(bound, op).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(AmqpError::Timeout {
            what: what.into(),
            url: url.to_owned(),
            after: bound,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_step_fails_with_what_it_was() {
        let never = std::future::pending::<Result<(), AmqpError>>();
        let e = bounded(
            "declaring queue x.server",
            "amqp://h/",
            Duration::from_millis(10),
            never,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(
                "declaring queue x.server on the broker at amqp://h/ timed out after 10ms"
            ),
            "{e}"
        );
        assert!(e.contains("rabbitmqctl status"), "{e}");
    }
}

//! Reaching the server: retries while it is away, saying so, and going
//! online where the last run stopped showing messages.

use std::time::Instant;

use chat_core::backoff::Backoff;
use chat_core::{ChatClient, ClientError, Incoming};

use crate::keeper::Keeper;
use crate::output::Output;

/// Retries `attempt` while it fails transiently, saying so, until `deadline`.
pub(crate) async fn retry<T, F, Fut>(
    out: &Output,
    endpoint: &str,
    deadline: Option<Instant>,
    mut attempt: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut backoff = Backoff::new();
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                if deadline.is_some_and(|d| Instant::now() + delay > d) {
                    return Err(e);
                }
                out.notice(&format!(
                    "{e}; is the server at {endpoint} running? retrying in {:.1}s",
                    delay.as_secs_f32()
                ));
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Goes online after the last seq shown (retrying as long as it takes) and
/// says so.
pub(crate) async fn join<C: ChatClient>(
    client: &C,
    out: &Output,
    endpoint: &str,
    state: &Keeper,
) -> Result<Incoming, ClientError> {
    let after = state.last_shown_seq();
    let incoming = retry(out, endpoint, None, || client.join_after(after)).await?;
    out.joined(client.id());
    Ok(incoming)
}

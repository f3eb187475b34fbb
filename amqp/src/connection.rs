//! Connection helpers that the server and the client share.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

/// Most time a graceful connection close may take: lapin can wait for a
/// `close-ok` forever when the socket died while the close was being sent.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Closes `conn` politely if it is still up, without ever hanging.
pub(crate) async fn close_connection(conn: &Connection, why: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, why.into())).await;
}

pub(crate) fn connection_properties(name: &str) -> ConnectionProperties {
    ConnectionProperties::default().with_connection_name(name.into())
}

/// The URL without its password, for logs and error messages (each URL of
/// a comma-separated list).
pub fn redact(url: &str) -> String {
    if url.contains(',') {
        return url.split(',').map(redact).collect::<Vec<_>>().join(",");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact("amqp://host/%2f"), "amqp://host/%2f");
        assert_eq!(
            redact("amqp://a:x@h1/%2f,amqp://b:y@h2/%2f"),
            "amqp://a:***@h1/%2f,amqp://b:***@h2/%2f"
        );
    }
}

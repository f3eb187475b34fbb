//! Several broker URLs (the nodes of one RabbitMQ cluster), and the one
//! place that decides which of them to connect to.
//!
//! `--amqp-url` / `AMQP_URL` may be a comma-separated list. Server, clients,
//! health checks and loadgen all connect through [`Brokers::connect`]: it
//! tries the preferred node first and then the others in list order, and the
//! one that answers becomes the preferred node. After a connection is lost
//! the caller says so with [`Brokers::lost`], and the next attempt starts
//! with the *following* node: a node that just went away is the one least
//! likely to answer, and trying it first would cost a connect timeout.
//!
//! Every connection asks for the same AMQP heartbeat ([`Brokers::with_heartbeat`],
//! `--heartbeat`): it is how the broker notices a peer that went silent
//! without closing its socket (see [`heartbeat_uri`]).
//!
//! Rotation and the handshake's settings are all this module does. Resuming after the new connection is
//! up (redeclaring, reconsuming, republishing unanswered requests and
//! unconfirmed messages) is the reconnect logic of the server and the client,
//! which is the same whichever node they land on: in a cluster every node
//! serves every queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::Connection;
use lapin::uri::AMQPUri;

use crate::broker_users::Login;
use crate::connection::{connection_properties, redact};
use crate::deadline::bounded;
use crate::error::AmqpError;

/// The URLs of one `--amqp-url` value, in order, with a rotating start.
#[derive(Debug)]
pub struct Brokers {
    /// As given, passwords included (never logged: see [`redact`]).
    urls: Vec<String>,
    /// Index of the URL tried first by the next [`Brokers::connect`].
    first: AtomicUsize,
    /// Heartbeat asked for on every connection, in seconds, unless the URL
    /// says `?heartbeat=` itself.
    heartbeat: u16,
}

/// A connection and which URL of the list it went to.
pub struct Connected {
    pub conn: Connection,
    /// Position in the list, to pass back to [`Brokers::lost`].
    pub index: usize,
    /// The URL without its password, for logs.
    pub url: String,
    /// The virtual host of that URL.
    pub vhost: String,
}

impl Brokers {
    /// Splits a comma-separated list (blanks around commas are ignored).
    /// An empty list is kept as one empty URL, so that connecting fails with
    /// the client library's own message.
    pub fn new(spec: &str) -> Self {
        let mut urls: Vec<String> = spec
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        if urls.is_empty() {
            urls.push(spec.trim().to_owned());
        }
        Self {
            urls,
            first: AtomicUsize::new(0),
            heartbeat: crate::DEFAULT_HEARTBEAT_SECS,
        }
    }

    /// The same list, asking for a `secs` heartbeat on every connection
    /// whose URL does not set one.
    pub fn with_heartbeat(mut self, secs: u16) -> Self {
        self.heartbeat = secs;
        self
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// Checks that every URL of the list parses, so that a typo is refused
    /// at once with what is wrong, instead of being retried as a broker
    /// that does not answer.
    pub fn check(&self) -> Result<(), AmqpError> {
        for url in &self.urls {
            heartbeat_uri(url, self.heartbeat).map_err(|reason| AmqpError::InvalidUrl {
                url: redact(url),
                reason,
            })?;
        }
        Ok(())
    }

    /// The list without passwords, for logs and error messages.
    pub fn redacted(&self) -> String {
        self.urls
            .iter()
            .map(|u| redact(u))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The order of the next attempt: the preferred URL, then the rest of
    /// the list, wrapping around.
    pub fn order(&self) -> Vec<usize> {
        rotation(self.first.load(Ordering::Relaxed), self.urls.len())
    }

    /// Says that the connection to URL `index` was lost: the next attempt
    /// starts with the URL after it. A report about a URL that is no longer
    /// the preferred one (an older connection) changes nothing.
    pub fn lost(&self, index: usize) {
        let n = self.urls.len();
        let _ = self.first.compare_exchange(
            index,
            (index + 1) % n,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Connects to the first URL that answers, in [`Brokers::order`]; each
    /// attempt is bounded by `bound`. With one URL its error is returned as
    /// is; with several, one error lists why each failed.
    pub async fn connect(&self, name: &str, bound: Duration) -> Result<Connected, AmqpError> {
        self.connect_as(name, bound, None).await
    }

    /// [`Self::connect`], logging in as `login` instead of the URLs' own
    /// user (per-client broker users: [`crate::broker_users`]).
    pub async fn connect_as(
        &self,
        name: &str,
        bound: Duration,
        login: Option<&Login>,
    ) -> Result<Connected, AmqpError> {
        let mut failures = Vec::new();
        let mut last = None;
        for index in self.order() {
            let raw = &self.urls[index];
            let url = match login {
                None => redact(raw),
                Some(login) => redact_as(raw, &login.user),
            };
            let uri = heartbeat_uri(raw, self.heartbeat)
                .map(|mut uri| {
                    if let Some(login) = login {
                        uri.authority.userinfo.username.clone_from(&login.user);
                        uri.authority.userinfo.password.clone_from(&login.password);
                    }
                    uri
                })
                .map_err(|reason| AmqpError::InvalidUrl {
                    url: redact(raw),
                    reason,
                });
            let vhost = uri.as_ref().map(|u| u.vhost.clone()).unwrap_or_default();
            let attempt = async {
                Ok::<_, AmqpError>(
                    Connection::connect_uri(uri?, connection_properties(name)).await?,
                )
            };
            match bounded("connecting (AMQP handshake)", &url, bound, attempt).await {
                Ok(conn) => {
                    self.first.store(index, Ordering::Relaxed);
                    return Ok(Connected {
                        conn,
                        index,
                        url,
                        vhost,
                    });
                }
                Err(e) => {
                    if self.urls.len() > 1 {
                        tracing::debug!("broker {url} did not answer: {e}");
                    }
                    failures.push(format!("{url}: {e}"));
                    last = Some(e);
                }
            }
        }
        match last {
            Some(e) if self.urls.len() == 1 => Err(e),
            _ => Err(AmqpError::NoBroker(failures.join("; "))),
        }
    }
}

/// `url` parsed, with `heartbeat=secs` unless it sets a heartbeat itself.
///
/// The heartbeat is what makes the broker drop the connection of a peer
/// that stopped answering (a frozen process, a dead network path) and with
/// it its exclusive consumer: a client's ID goes offline and its
/// unacknowledged deliveries go back to its queue. RabbitMQ closes a
/// connection after about two silent intervals, and lapin (this side) closes
/// it when nothing came from the broker for two intervals. The client asks
/// for `secs` in `connection.tune-ok`; lapin takes the lower of that and the
/// broker's proposal (RabbitMQ: 60 s), and 0 means "the broker's value".
///
/// A `heartbeat` query in the URL wins: it is the more specific setting
/// (one node of a list), and it is the standard way to set it in an AMQP
/// URI, which other clients of the same `AMQP_URL` read too.
pub fn heartbeat_uri(url: &str, secs: u16) -> Result<AMQPUri, String> {
    let mut uri: AMQPUri = url.parse()?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(secs);
    }
    Ok(uri)
}

/// `url` without its password, with `user` in place of its own user.
fn redact_as(url: &str, user: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact(url);
    };
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}:***@{host}")
}

/// `n` indexes starting at `first` (modulo `n`), wrapping around.
fn rotation(first: usize, n: usize) -> Vec<usize> {
    (0..n).map(|i| (first + i) % n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "amqp://guest:secret@a:5672/%2f";

    #[test]
    fn a_list_is_split_on_commas() {
        let b = Brokers::new(" amqp://a/%2f, amqp://b/%2f ,,amqp://c/%2f");
        assert_eq!(b.urls, ["amqp://a/%2f", "amqp://b/%2f", "amqp://c/%2f"]);
        assert_eq!(Brokers::new(A).urls, [A]);
        assert_eq!(Brokers::new("").len(), 1);
    }

    #[test]
    fn the_list_is_redacted_url_by_url() {
        let b = Brokers::new(&format!("{A},amqp://u:p@b/%2f"));
        assert_eq!(
            b.redacted(),
            "amqp://guest:***@a:5672/%2f,amqp://u:***@b/%2f"
        );
    }

    #[test]
    fn another_login_is_shown_without_its_password() {
        assert_eq!(
            redact_as(A, "ns.client.al"),
            "amqp://ns.client.al:***@a:5672/%2f"
        );
        assert_eq!(redact_as("amqp://h/%2f", "u"), "amqp://u:***@h/%2f");
    }

    #[test]
    fn the_first_attempt_goes_in_list_order() {
        let b = Brokers::new("a,b,c");
        assert_eq!(b.order(), [0, 1, 2]);
    }

    #[test]
    fn after_a_loss_the_next_node_is_tried_first() {
        let b = Brokers::new("a,b,c");
        b.lost(0);
        assert_eq!(b.order(), [1, 2, 0]);
        b.lost(1);
        assert_eq!(b.order(), [2, 0, 1]);
        b.lost(2);
        assert_eq!(b.order(), [0, 1, 2], "wraps around");
    }

    #[test]
    fn a_stale_loss_report_does_not_rotate_twice() {
        let b = Brokers::new("a,b,c");
        b.lost(0);
        // A second task of the same, already replaced connection says so too.
        b.lost(0);
        assert_eq!(b.order(), [1, 2, 0]);
    }

    #[test]
    fn one_url_stays_put() {
        let b = Brokers::new(A);
        b.lost(0);
        assert_eq!(b.order(), [0]);
    }

    #[test]
    fn the_heartbeat_is_asked_for_unless_the_url_sets_one() {
        let uri = heartbeat_uri(A, 5).unwrap();
        assert_eq!(uri.query.heartbeat, Some(5));
        assert_eq!(uri.authority.port, 5672);
        let uri = heartbeat_uri(&format!("{A}?heartbeat=30"), 5).unwrap();
        assert_eq!(uri.query.heartbeat, Some(30), "the URL wins");
        assert!(heartbeat_uri("not a url", 5).is_err());
    }

    #[test]
    fn check_names_the_bad_url_of_a_list() {
        let b = Brokers::new("amqp://a/%2f,amqp://u:pw@b/%2f?heartbeat=x");
        let e = b.check().unwrap_err().to_string();
        assert!(
            e.contains("invalid broker URL amqp://u:***@b/%2f?heartbeat=x"),
            "{e}"
        );
        assert!(Brokers::new("amqp://a/%2f,amqp://b/%2f").check().is_ok());
    }

    #[tokio::test]
    async fn a_bad_url_is_named_without_its_password() {
        let e = Brokers::new("amqp://guest:pw@127.0.0.1:5672/%2f?heartbeat=soon")
            .connect("test", Duration::from_secs(5))
            .await
            .err()
            .expect("a bad URL")
            .to_string();
        assert!(e.contains("invalid broker URL amqp://guest:***@"), "{e}");
        assert!(!e.contains("pw"), "password leaked: {e}");
    }

    #[tokio::test]
    async fn a_dead_node_is_skipped_and_named_when_all_fail() {
        // Port 1 on localhost refuses at once: two dead nodes.
        let b = Brokers::new("amqp://guest:pw@127.0.0.1:1/%2f,amqp://guest:pw@127.0.0.1:1/x");
        let e = b
            .connect("test", Duration::from_secs(5))
            .await
            .err()
            .expect("no broker there")
            .to_string();
        assert!(e.contains("amqp://guest:***@127.0.0.1:1/%2f:"), "{e}");
        assert!(e.contains("amqp://guest:***@127.0.0.1:1/x:"), "{e}");
        assert!(!e.contains("pw"), "password leaked: {e}");
        assert_eq!(b.order(), [0, 1], "a failed attempt does not rotate");
    }
}

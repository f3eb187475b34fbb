//! Prometheus metrics of a chat server, the same names on both stacks.
//!
//! [`Metrics`] belongs to a [`crate::ChatServer`]: chat-core counts what it
//! decides itself (accepted, acknowledged, pending, registered, online, the
//! journal's batches and append times); an adapter adds what only it sees,
//! through [`Metrics::delivered`] (a gRPC stream write, an AMQP publish the
//! broker confirmed) and [`Metrics::refused`] (where it answers a request
//! with an error).
//!
//! The hot path stays cheap: a counter or gauge is one atomic add on a
//! handle created at start (no look-up, no allocation, no lock per message);
//! the two histograms take their lock once per journal batch, in the
//! journal's own thread.
//!
//! [`serve`] exposes them at `/metrics` in the Prometheus text format
//! (`--metrics-listen`); [`scrape`] reads such an endpoint back, for loadgen
//! and the tests. README "Metrics" lists every metric and what it means on
//! each stack.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};
use tokio::net::{TcpListener, TcpStream};

use crate::error::ErrorCode;

/// Path of the endpoint.
pub const PATH: &str = "/metrics";
/// Content type of the Prometheus text format 0.0.4.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// How long [`scrape`] waits for a whole answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Label of [`Metrics::refused`]: the error code's name (`NOT_FOUND`, ...).
type CodeLabel = [(&'static str, &'static str); 1];

/// Every metric of one chat server.
pub struct Metrics {
    registry: Registry,
    pub(crate) accepted: Counter,
    delivered: Counter,
    pub(crate) acked: Counter,
    pub(crate) pending: Gauge,
    pub(crate) registered: Gauge,
    online: Gauge,
    pub(crate) journal_batch: Histogram,
    pub(crate) journal_append: Histogram,
    send_batch: Histogram,
    /// One counter per [`ErrorCode`], indexed by its number, so counting a
    /// refusal is an atomic add rather than a family look-up.
    refused: Vec<Counter>,
}

/// Registers `metric` under `name` and returns it (a handle to the same
/// value: prometheus-client metrics are shared on clone).
fn register<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// The journal's batch size and append time, and the sends per request.
fn register_histograms(r: &mut Registry) -> (Histogram, Histogram, Histogram) {
    // 1, 2, 4, ... 1024 (the writer takes at most 1024 records at once).
    let journal_batch = register(
        r,
        "chat_journal_batch_records",
        "Records (messages, acks, registrations) written by one journal append (group commit)",
        Histogram::new(exponential_buckets(1.0, 2.0, 11)),
    );
    // 4 µs .. about 2 s, doubling.
    let journal_append = register(
        r,
        "chat_journal_append_seconds",
        "Time of one journal append: the write calls, and the fsync with --durability fsync",
        Histogram::new(exponential_buckets(4e-6, 2.0, 20)),
    );
    // 1, 2, 4, ... 1024 sends per request.
    let send_batch = register(
        r,
        "chat_send_batch_messages",
        "Sends carried by one send request: 1 for a lone send, more for a batch (the clients' adaptive batching)",
        Histogram::new(exponential_buckets(1.0, 2.0, 11)),
    );
    (journal_batch, journal_append, send_batch)
}

/// One refusal counter per [`ErrorCode`], indexed by its number, in the
/// family `chat_requests_refused` labelled by the code's name.
fn register_refused(r: &mut Registry) -> Vec<Counter> {
    let family = Family::<CodeLabel, Counter>::default();
    let refused = (0..)
        .map_while(|n| ErrorCode::try_from(n).ok())
        .map(|code| family.get_or_create_owned(&[("code", code_name(code))]))
        .collect();
    r.register(
        "chat_requests_refused",
        "Requests answered with an error, by error code",
        family,
    );
    refused
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let accepted = register(
            &mut r,
            "chat_messages_accepted",
            "Messages accepted (appended to log.txt) since the server started; a retried send is counted once",
            Counter::default(),
        );
        let delivered = register(
            &mut r,
            "chat_messages_delivered",
            "Messages handed to their next hop: written to the recipient's stream (gRPC) or confirmed by the broker in the recipient's queue (AMQP); re-sends after a reconnect count again",
            Counter::default(),
        );
        let acked = register(
            &mut r,
            "chat_messages_acked",
            "Messages acknowledged: the recipient's cursor moved past them (gRPC: the client's ack; AMQP: the broker's confirm)",
            Counter::default(),
        );
        let pending = register(
            &mut r,
            "chat_messages_pending",
            "Messages accepted and not yet acknowledged, over all recipients (including those from before a restart)",
            Gauge::default(),
        );
        let registered = register(
            &mut r,
            "chat_clients_registered",
            "Registered client IDs",
            Gauge::default(),
        );
        let online = register(
            &mut r,
            "chat_clients_online",
            "Clients online as the server's registry has them: with an open Subscribe stream (gRPC); joined and consuming their queue (AMQP)",
            Gauge::default(),
        );
        let (journal_batch, journal_append, send_batch) = register_histograms(&mut r);
        let refused = register_refused(&mut r);
        Self {
            registry: r,
            accepted,
            delivered,
            acked,
            pending,
            registered,
            online,
            journal_batch,
            journal_append,
            send_batch,
            refused,
        }
    }

    /// A send request carried `n` sends (see `chat_send_batch_messages`).
    pub fn send_batch(&self, n: usize) {
        self.send_batch.observe(n as f64);
    }

    /// `n` messages reached their next hop (see `chat_messages_delivered`).
    pub fn delivered(&self, n: u64) {
        self.delivered.inc_by(n);
    }

    /// A request was answered with `code`.
    pub fn refused(&self, code: ErrorCode) {
        if let Some(c) = self.refused.get(code as usize) {
            c.inc();
        }
    }

    pub(crate) fn went_online(&self) {
        self.online.inc();
    }

    pub(crate) fn went_offline(&self) {
        self.online.dec();
    }

    /// Every metric in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The label value of `code`: its name in chat.proto.
fn code_name(code: ErrorCode) -> &'static str {
    code.as_str_name()
}

/// `--metrics-listen`: serves `server`'s metrics on `addr` and logs the
/// bound address (`metrics on http://ADDR/metrics`).
pub async fn start(addr: SocketAddr, server: &crate::ChatServer) -> std::io::Result<SocketAddr> {
    let bound = serve(addr, server.metrics().clone()).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot serve metrics on {addr}: {e}; is something else listening there? \
                     choose another --metrics-listen (CHAT_METRICS_LISTEN)"
            ),
        )
    })?;
    tracing::info!("metrics on http://{bound}{PATH}");
    Ok(bound)
}

/// Binds `addr` and serves `metrics` at [`PATH`] in a background task for
/// as long as the process runs. Returns the bound address (`addr` may have
/// port 0).
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(accept_loop(listener, metrics));
    Ok(bound)
}

async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!(error = %e, "metrics endpoint cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = respond(&metrics, &req);
                async move { Ok::<_, Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if req.uri().path() != PATH {
        (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            format!("not found: the metrics are at {PATH}\n"),
        )
    } else {
        (StatusCode::OK, CONTENT_TYPE, metrics.encode())
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// One reading of a metrics endpoint.
#[derive(Clone, Debug)]
pub struct Scrape(prometheus_parse::Scrape);

/// A histogram as read: cumulative `(upper bound, count)` buckets, the sum
/// and the count of its observations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramReading {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl HistogramReading {
    /// What was observed between `earlier` and `self` (same buckets).
    pub fn since(&self, earlier: &Self) -> Self {
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, n)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|(l, _)| *l == le)
                    .map_or(0.0, |(_, n)| *n);
                (le, n - before)
            })
            .collect();
        Self {
            buckets,
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// Mean observation; `None` without observations.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// The `q` quantile, interpolated linearly inside its bucket as
    /// Prometheus' `histogram_quantile` does; `None` without observations.
    /// In the last (+Inf) bucket it is the highest finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, n) in &self.buckets {
            if n >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let width = n - lower.1;
                let into = if width > 0.0 {
                    (rank - lower.1) / width
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * into);
            }
            lower = (le, n);
        }
        Some(lower.0)
    }
}

impl Scrape {
    /// Parses text in the Prometheus format.
    pub fn parse(text: &str) -> std::io::Result<Self> {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        prometheus_parse::Scrape::parse(lines).map(Self)
    }

    /// The value of the unlabelled sample `name` (a counter's `_total`, a
    /// gauge).
    pub fn value(&self, name: &str) -> Option<f64> {
        self.0
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.is_empty())
            .and_then(|s| number(&s.value))
    }

    /// The value of sample `name` whose label `label` is `value`.
    pub fn labelled(&self, name: &str, label: &str, value: &str) -> Option<f64> {
        self.0
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get(label) == Some(value))
            .and_then(|s| number(&s.value))
    }

    /// The sum of every sample `name`, whatever its labels (0 if none).
    pub fn total(&self, name: &str) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter_map(|s| number(&s.value))
            .sum()
    }

    /// The unlabelled histogram `name`.
    pub fn histogram(&self, name: &str) -> Option<HistogramReading> {
        let buckets = self.0.samples.iter().find_map(|s| match &s.value {
            prometheus_parse::Value::Histogram(b) if s.metric == name => {
                Some(b.iter().map(|b| (b.less_than, b.count)).collect::<Vec<_>>())
            }
            _ => None,
        })?;
        Some(HistogramReading {
            buckets,
            sum: self.value(&format!("{name}_sum"))?,
            count: self.value(&format!("{name}_count"))?,
        })
    }
}

fn number(v: &prometheus_parse::Value) -> Option<f64> {
    use prometheus_parse::Value as V;
    match v {
        V::Counter(x) | V::Gauge(x) | V::Untyped(x) => Some(*x),
        V::Histogram(_) | V::Summary(_) => None,
    }
}

/// Reads the metrics endpoint at `addr` (`GET /metrics`, HTTP/1.1).
pub async fn scrape(addr: SocketAddr) -> std::io::Result<Scrape> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        std::io::Error::other(format!("metrics at http://{addr}{PATH}: {what}: {e}"))
    };
    let text = tokio::time::timeout(SCRAPE_TIMEOUT, async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| fail("cannot connect", &e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail("HTTP handshake", &e))?;
        tokio::spawn(conn);
        let request = Request::get(PATH)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail("request", &e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| fail("no answer", &e))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| fail("reading the body", &e))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(fail("answered", &status));
        }
        String::from_utf8(body.to_vec()).map_err(|e| fail("not UTF-8", &e))
    })
    .await
    .map_err(|_| fail("timed out after", &format!("{SCRAPE_TIMEOUT:?}")))??;
    Scrape::parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_counted_is_what_is_read_back() {
        let m = Metrics::new();
        m.accepted.inc_by(3);
        m.acked.inc();
        m.pending.set(2);
        m.registered.set(2);
        m.refused(ErrorCode::NotFound);
        m.refused(ErrorCode::NotFound);
        for records in [1.0, 3.0, 3.0, 700.0] {
            m.journal_batch.observe(records);
        }
        let s = Scrape::parse(&m.encode()).unwrap();
        assert_eq!(s.value("chat_messages_accepted_total"), Some(3.0));
        assert_eq!(s.value("chat_messages_acked_total"), Some(1.0));
        assert_eq!(s.value("chat_messages_delivered_total"), Some(0.0));
        assert_eq!(s.value("chat_messages_pending"), Some(2.0));
        assert_eq!(s.value("chat_clients_registered"), Some(2.0));
        assert_eq!(s.value("chat_clients_online"), Some(0.0));
        assert_eq!(
            s.labelled("chat_requests_refused_total", "code", "NOT_FOUND"),
            Some(2.0)
        );
        assert_eq!(s.total("chat_requests_refused_total"), 2.0);
        let h = s.histogram("chat_journal_batch_records").unwrap();
        assert_eq!((h.count, h.sum), (4.0, 707.0));
        assert_eq!(h.mean(), Some(707.0 / 4.0));
        // 1 in le=1, 3 and 3 in le=4, 700 in le=1024.
        assert_eq!(h.quantile(0.25), Some(1.0));
        assert_eq!(h.quantile(0.5), Some(3.0), "halfway into (2, 4]");
        assert_eq!(h.quantile(1.0), Some(1024.0));
        let empty = s.histogram("chat_journal_append_seconds").unwrap();
        assert_eq!((empty.mean(), empty.quantile(0.99)), (None, None));
    }

    #[test]
    fn a_histogram_delta_is_what_happened_in_between() {
        let m = Metrics::new();
        m.journal_append.observe(0.001);
        let before = Scrape::parse(&m.encode()).unwrap();
        for _ in 0..99 {
            m.journal_append.observe(5e-6);
        }
        m.journal_append.observe(1.0);
        let after = Scrape::parse(&m.encode()).unwrap();
        let name = "chat_journal_append_seconds";
        let delta = after
            .histogram(name)
            .unwrap()
            .since(&before.histogram(name).unwrap());
        assert_eq!(delta.count, 100.0);
        let p99 = delta.quantile(0.99).unwrap();
        assert!((4e-6..=8e-6).contains(&p99), "{p99}");
        assert!(delta.quantile(1.0).unwrap() >= 1.0);
    }

    #[tokio::test]
    async fn the_endpoint_serves_metrics_and_nothing_else() {
        let m = Arc::new(Metrics::new());
        m.delivered(5);
        let addr = serve("127.0.0.1:0".parse().unwrap(), m.clone())
            .await
            .unwrap();
        let s = scrape(addr).await.unwrap();
        assert_eq!(s.value("chat_messages_delivered_total"), Some(5.0));
        m.delivered(1);
        let s = scrape(addr).await.unwrap();
        assert_eq!(s.value("chat_messages_delivered_total"), Some(6.0));

        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = Request::get("/other")
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("/metrics"));
    }
}

//! Per-client broker users (`--broker-auth per-client`): what the *broker*
//! enforces, on top of what the server enforces (docs/amqp.md, "Who
//! enforces what").
//!
//! With one shared broker account every program that holds it can consume,
//! purge or delete any inbox and publish anything anywhere. In per-client
//! mode the server creates, through the RabbitMQ management HTTP API:
//!
//! * a **bootstrap user** `<ns>.register` (public password, see
//!   [`DEFAULT_REGISTER_PASSWORD`]) that may only declare and read a
//!   server-named reply queue and publish to `<ns>.requests`: enough to
//!   register, nothing else;
//! * on every successful `register`, the user `<ns>.client.<id>` with the
//!   client's secret as its password (the broker stores its own salted
//!   hash; the server still keeps only the SHA-256), who may in addition
//!   read (consume) its own inbox `<ns>.client.<id>`.
//!
//! No client user may write to the default exchange (`amq.default`) or to
//! `<ns>.deliver`, configure (declare, delete) any durable queue, or read
//! any other inbox: the broker answers ACCESS_REFUSED.
//!
//! [`Management`] is a small client of the management API (plain HTTP/1.1
//! on hyper; the admin credentials come from the URL's userinfo and are
//! never logged).

use std::time::Duration;

use base64::Engine as _;
use chat_core::ClientId;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::deadline::op_timeout;
use crate::error::AmqpError;
use crate::topology::Names;

/// Password of the bootstrap user `<ns>.register` unless
/// `--register-password` says otherwise. Public on purpose: the bootstrap
/// user can only ask the server to register an ID (which checks the secret).
pub const DEFAULT_REGISTER_PASSWORD: &str = "chat-register";

/// Which broker account(s) the chat's programs use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerAuth {
    /// Everyone uses the account of the AMQP URL (e.g. guest); the broker
    /// enforces nothing per client. Works on any broker.
    #[default]
    Shared,
    /// Each client logs in as its own broker user, created by the server
    /// through the management API; the broker refuses access to other
    /// clients' queues.
    PerClient,
}

impl BrokerAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::PerClient => "per-client",
        }
    }
}

impl std::fmt::Display for BrokerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A broker login: user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The three permission patterns of one broker user on one vhost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// A regex that matches `name` literally (names are `[A-Za-z0-9_.-]`).
fn literal(name: &str) -> String {
    name.replace('.', r"\.")
}

/// Server-named reply queues (`amq.gen-…`).
const REPLY_QUEUES: &str = r"amq\.gen-.*";

/// The bootstrap user: its own reply queue, and requests.
pub fn register_permissions(names: &Names) -> Permissions {
    Permissions {
        configure: format!("^{REPLY_QUEUES}$"),
        write: format!("^{}$", literal(&names.requests_exchange())),
        read: format!("^{REPLY_QUEUES}$"),
    }
}

/// A client's user: the bootstrap user's rights plus reading its own inbox.
pub fn client_permissions(names: &Names, id: &ClientId) -> Permissions {
    Permissions {
        configure: format!("^{REPLY_QUEUES}$"),
        write: format!("^{}$", literal(&names.requests_exchange())),
        read: format!("^({}|{REPLY_QUEUES})$", literal(&names.client_queue(id))),
    }
}

/// A client of the RabbitMQ management HTTP API.
pub struct Management {
    host: String,
    port: u16,
    /// Path prefix of the API (`/api` unless the URL has a path).
    api: String,
    /// `Basic …` of the URL's userinfo.
    authorization: String,
    /// The URL without its password, for messages.
    redacted: String,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl Management {
    /// Parses `http://user:password@host:port[/prefix]` (the admin account
    /// in the userinfo).
    pub fn new(raw: &str) -> Result<Self, AmqpError> {
        let bad = |why: &str| {
            AmqpError::Management(format!(
                "bad --management-url {}: {why} (expected e.g. http://guest:guest@127.0.0.1:15672)",
                crate::connection::redact(raw)
            ))
        };
        let url = url::Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "http" {
            return Err(bad("only http:// is supported (no TLS stack is built in)"));
        }
        let host = url.host_str().ok_or_else(|| bad("no host"))?.to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        if url.username().is_empty() {
            return Err(bad(
                "no user: put the admin account in the URL (http://user:password@host:port)",
            ));
        }
        let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
        let user = decode(url.username());
        let password = decode(url.password().unwrap_or(""));
        let authorization = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let prefix = url.path().trim_end_matches('/');
        let prefix = if prefix.ends_with("/api") {
            prefix.to_owned()
        } else {
            format!("{prefix}/api")
        };
        Ok(Self {
            host,
            port,
            api: prefix,
            authorization,
            redacted: crate::connection::redact(raw),
        })
    }

    /// The URL without its password.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    fn path(&self, segments: &[&str]) -> String {
        let mut p = self.api.clone();
        for s in segments {
            p.push('/');
            p.extend(utf8_percent_encode(s, NON_ALPHANUMERIC));
        }
        p
    }

    /// One request on a fresh connection, within [`op_timeout`].
    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), AmqpError> {
        let path = self.path(segments);
        let what = format!("{method} {path}");
        let exchange = async {
            let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| self.unreachable(&e.to_string()))?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| self.unreachable(&e.to_string()))?;
            let driver = tokio::spawn(conn);
            let bytes = body.map(|b| b.to_string()).unwrap_or_default();
            let request = Request::builder()
                .method(method)
                .uri(&path)
                .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
                .header(hyper::header::AUTHORIZATION, &self.authorization)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(bytes)))
                .map_err(|e| AmqpError::Management(format!("{what}: {e}")))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| self.unreachable(&e.to_string()))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| self.unreachable(&e.to_string()))?
                .to_bytes();
            driver.abort();
            Ok::<_, AmqpError>((status, body))
        };
        match tokio::time::timeout(op_timeout(), exchange).await {
            Ok(r) => r,
            Err(_) => Err(self.unreachable(&format!("{what} timed out after {:?}", op_timeout()))),
        }
    }

    fn unreachable(&self, why: &str) -> AmqpError {
        AmqpError::ManagementUnreachable(format!(
            "the RabbitMQ management API at {} does not answer ({why}): enable it on the broker with `rabbitmq-plugins enable rabbitmq_management`, or pass the right --management-url (CHAT_AMQP_MANAGEMENT_URL)",
            self.redacted
        ))
    }

    /// Checks a call's answer: 2xx, else an error naming the call.
    fn expect_ok(&self, what: &str, status: StatusCode, body: &[u8]) -> Result<(), AmqpError> {
        if status.is_success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(body);
        let text: String = text.chars().take(200).collect();
        Err(AmqpError::Management(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => format!(
                "{what}: the management API at {} refuses the account of the URL ({status}: {text}); use an account tagged `administrator` (it creates and deletes users)",
                self.redacted
            ),
            _ => format!(
                "{what}: the management API at {} answered {status}: {text}",
                self.redacted
            ),
        }))
    }

    /// The API answers and the URL's account may manage users (it is tagged
    /// `administrator`).
    pub async fn check(&self) -> Result<(), AmqpError> {
        let (status, body) = self.call(Method::GET, &["whoami"], None).await?;
        self.expect_ok("checking the management account", status, &body)?;
        let who: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let name = who["name"].as_str().unwrap_or("?").to_owned();
        // RabbitMQ 3.x says "administrator" (or a comma list), 4.x a list.
        let tags = match &who["tags"] {
            serde_json::Value::Array(list) => list
                .iter()
                .filter_map(|t| t.as_str())
                .map(str::to_owned)
                .collect::<Vec<_>>(),
            serde_json::Value::String(s) => s.split(',').map(|t| t.trim().to_owned()).collect(),
            _ => Vec::new(),
        };
        if tags.iter().any(|t| t == "administrator") {
            Ok(())
        } else {
            Err(AmqpError::Management(format!(
                "the management account {name:?} of {} may not manage users (its tags are {tags:?}); use an account tagged `administrator`",
                self.redacted
            )))
        }
    }

    /// Creates or updates a user (no tags: it cannot use the management API).
    pub async fn put_user(&self, login: &Login) -> Result<(), AmqpError> {
        let body = serde_json::json!({ "password": login.password, "tags": "" });
        let (status, text) = self
            .call(Method::PUT, &["users", &login.user], Some(body))
            .await?;
        self.expect_ok(
            &format!("creating broker user {}", login.user),
            status,
            &text,
        )
    }

    /// Sets a user's permissions on `vhost`.
    pub async fn set_permissions(
        &self,
        vhost: &str,
        user: &str,
        p: &Permissions,
    ) -> Result<(), AmqpError> {
        let body = serde_json::json!({
            "configure": p.configure,
            "write": p.write,
            "read": p.read,
        });
        let (status, text) = self
            .call(Method::PUT, &["permissions", vhost, user], Some(body))
            .await?;
        self.expect_ok(
            &format!("setting the permissions of broker user {user} on vhost {vhost:?}"),
            status,
            &text,
        )
    }

    /// Deletes a user; one that is not there is fine.
    pub async fn delete_user(&self, user: &str) -> Result<(), AmqpError> {
        let (status, text) = self.call(Method::DELETE, &["users", user], None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        self.expect_ok(&format!("deleting broker user {user}"), status, &text)
    }

    /// Creates a virtual host (tests: a vhost without the event exchange).
    pub async fn put_vhost(&self, vhost: &str) -> Result<(), AmqpError> {
        let (status, text) = self.call(Method::PUT, &["vhosts", vhost], None).await?;
        self.expect_ok(&format!("creating vhost {vhost:?}"), status, &text)
    }

    /// Deletes a virtual host and everything in it; one that is not there
    /// is fine.
    pub async fn delete_vhost(&self, vhost: &str) -> Result<(), AmqpError> {
        let (status, text) = self.call(Method::DELETE, &["vhosts", vhost], None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        self.expect_ok(&format!("deleting vhost {vhost:?}"), status, &text)
    }

    /// Names of every user on the broker.
    pub async fn users(&self) -> Result<Vec<String>, AmqpError> {
        let (status, body) = self.call(Method::GET, &["users"], None).await?;
        self.expect_ok("listing broker users", status, &body)?;
        let list: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        Ok(list
            .as_array()
            .map(|users| {
                users
                    .iter()
                    .filter_map(|u| u["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// The vhost the (first) AMQP URL names (`/` when it names none).
pub fn vhost_of(amqp_url: &str) -> Result<String, AmqpError> {
    let first = amqp_url.split(',').map(str::trim).next().unwrap_or("");
    first
        .parse::<lapin::uri::AMQPUri>()
        .map(|u| u.vhost)
        .map_err(|e| {
            AmqpError::Management(format!(
                "cannot read the vhost of {}: {e}",
                crate::connection::redact(first)
            ))
        })
}

/// The server's side of per-client mode: creates the bootstrap user at
/// start and a client's user at each registration.
#[derive(Debug)]
pub struct BrokerUsers {
    api: Management,
    vhost: String,
    names: Names,
}

impl BrokerUsers {
    /// Checks the management API (retrying while it does not answer, for
    /// up to [`op_timeout`]: a broker that is starting) and creates the
    /// bootstrap user.
    pub async fn setup(
        management_url: &str,
        amqp_url: &str,
        names: &Names,
        register_password: &str,
    ) -> Result<Self, AmqpError> {
        let api = Management::new(management_url)?;
        let vhost = vhost_of(amqp_url)?;
        let deadline = tokio::time::Instant::now() + op_timeout();
        let mut backoff = chat_core::backoff::Backoff::new();
        loop {
            match api.check().await {
                Ok(()) => break,
                Err(AmqpError::ManagementUnreachable(why))
                    if tokio::time::Instant::now() < deadline =>
                {
                    let delay = backoff.next_delay();
                    tracing::warn!("{why}; retrying in {:.1}s", delay.as_secs_f64());
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
        let users = Self {
            api,
            vhost,
            names: names.clone(),
        };
        let login = register_login(names, register_password);
        users.api.put_user(&login).await?;
        users
            .api
            .set_permissions(&users.vhost, &login.user, &register_permissions(names))
            .await?;
        tracing::info!(
            management = users.api.redacted(),
            vhost = %users.vhost,
            bootstrap_user = %login.user,
            "per-client broker users: on"
        );
        Ok(users)
    }

    /// Creates (or updates) `id`'s broker user with `secret` as password,
    /// and gives it its permissions.
    pub async fn grant(&self, id: &ClientId, secret: &str) -> Result<(), AmqpError> {
        let login = client_login(&self.names, id, secret);
        self.api.put_user(&login).await?;
        self.api
            .set_permissions(
                &self.vhost,
                &login.user,
                &client_permissions(&self.names, id),
            )
            .await
    }
}

/// The bootstrap login of `names`.
pub fn register_login(names: &Names, password: &str) -> Login {
    Login {
        user: names.register_user(),
        password: password.to_owned(),
    }
}

/// `id`'s own login: its user, and its chat secret as password.
pub fn client_login(names: &Names, id: &ClientId, secret: &str) -> Login {
    Login {
        user: names.client_user(id),
        password: secret.to_owned(),
    }
}

/// Deletes every broker user of the namespace (the bootstrap user and all
/// `<ns>.client.*` users); for runs that must leave nothing behind.
pub async fn delete_namespace_users(management_url: &str, names: &Names) -> Result<(), AmqpError> {
    let api = Management::new(management_url)?;
    let clients = format!("{}.client.", names.namespace());
    for user in api.users().await? {
        // The rest must be a client ID (no dots), so that namespace "a"
        // leaves the users of namespace "a.client.x" alone.
        let ours = user == names.register_user()
            || user
                .strip_prefix(&clients)
                .is_some_and(|id| ClientId::parse(id).is_ok());
        if ours {
            api.delete_user(&user).await?;
        }
    }
    Ok(())
}

/// How long a client waits, after registering through the bootstrap user,
/// for its own login to work.
pub const RELOGIN_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_reach_only_the_own_inbox() {
        let names = Names::new("t.1").unwrap();
        let alice = ClientId::parse("alice").unwrap();
        let p = client_permissions(&names, &alice);
        assert_eq!(p.configure, r"^amq\.gen-.*$");
        assert_eq!(p.write, r"^t\.1\.requests$");
        assert_eq!(p.read, r"^(t\.1\.client\.alice|amq\.gen-.*)$");
        let r = register_permissions(&names);
        assert_eq!(r.read, r"^amq\.gen-.*$");
        assert_eq!(r.write, p.write);
    }

    #[test]
    fn user_names_cannot_collide() {
        let names = Names::new("ns").unwrap();
        // An ID "register" still gets a user of its own.
        let id = ClientId::parse("register").unwrap();
        assert_eq!(names.client_user(&id), "ns.client.register");
        assert_eq!(names.register_user(), "ns.register");
    }

    #[test]
    fn the_management_url_gives_host_api_and_basic_auth() {
        let m = Management::new("http://guest:gu%40st@127.0.0.1:15672").unwrap();
        assert_eq!((m.host.as_str(), m.port), ("127.0.0.1", 15672));
        assert_eq!(m.api, "/api");
        // base64("guest:gu@st")
        assert_eq!(m.authorization, "Basic Z3Vlc3Q6Z3VAc3Q=");
        assert_eq!(
            m.path(&["permissions", "/", "a.b"]),
            "/api/permissions/%2F/a%2Eb"
        );
        assert!(!m.redacted().contains("gu%40st"));
        let prefixed = Management::new("http://u:p@h/rabbit/").unwrap();
        assert_eq!((prefixed.api.as_str(), prefixed.port), ("/rabbit/api", 80));
    }

    #[test]
    fn bad_management_urls_say_what_to_pass() {
        for bad in ["https://u:p@h:15671", "http://h:15672", "not a url"] {
            let e = Management::new(bad).unwrap_err().to_string();
            assert!(e.contains("--management-url"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_vhost_comes_from_the_first_amqp_url() {
        assert_eq!(vhost_of("amqp://g:g@h:5672/%2f").unwrap(), "/");
        assert_eq!(
            vhost_of("amqp://g:g@h/chat,amqp://g:g@i/x").unwrap(),
            "chat"
        );
        assert_eq!(vhost_of("amqp://g:g@h").unwrap(), "/");
    }
}

//! Who a client is: its ID plus a secret that proves it.
//!
//! Without this, anyone who knows an ID could come back as it, read its
//! history and receive its messages. The first registration of an ID
//! *claims* it with a [`Secret`]; the server keeps only the SHA-256 of the
//! secret ([`SecretHash`], in `state.journal`), and every later operation
//! that acts as that ID must present the same secret. The comparison is
//! constant-time (`subtle`), so response times do not leak how much of a
//! guess was right.
//!
//! A secret is 1-128 visible ASCII characters (so it fits a gRPC metadata
//! value and a shell variable); [`Secret::generate`] makes 256 random bits
//! as 64 hex digits. The hash is not salted: generated secrets are random
//! and long, and the journal is the server's private file. A weak secret
//! given with `--secret` is only as good as the user made it.
//!
//! A [`Principal`] is the proof that one request authenticated: only
//! [`crate::ChatServer`] makes them, and its methods that act as an ID take
//! one, so an adapter cannot forget the check.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ChatError;
use crate::id::ClientId;

/// Longest accepted secret, in bytes.
pub const MAX_SECRET_LEN: usize = 128;

/// Random bytes in a generated secret (256 bits).
const GENERATED_BYTES: usize = 32;

/// A client's secret. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// 256 random bits from the OS generator, as 64 lowercase hex digits.
    pub fn generate() -> Self {
        use rand::RngCore as _;
        let mut bytes = [0u8; GENERATED_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Self(to_hex(&bytes))
    }

    /// Checks the shape: 1-128 visible ASCII characters (`!` to `~`).
    pub fn parse(raw: &str) -> Result<Self, ChatError> {
        if raw.is_empty() {
            return Err(ChatError::Unauthenticated(
                "no secret given: pass --secret (or CHAT_SECRET)".into(),
            ));
        }
        if raw.len() > MAX_SECRET_LEN || !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ChatError::Unauthenticated(format!(
                "a secret is 1-{MAX_SECRET_LEN} visible ASCII characters (no spaces)"
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> SecretHash {
        SecretHash::of(&self.0)
    }
}

/// SHA-256 of a secret: what the server stores and compares.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretHash([u8; 32]);

impl std::fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretHash({})", &self.to_hex()[..8])
    }
}

impl SecretHash {
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Whether `secret` hashes to this, compared in constant time.
    pub fn verify(&self, secret: &str) -> bool {
        self.matches(&Self::of(secret))
    }

    /// Constant-time equality (so a server can hash outside its lock).
    pub fn matches(&self, other: &SecretHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// 64 lowercase hex digits (the `state.journal` form).
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let digit = |b: u8| (b as char).to_digit(16);
            out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
        }
        Some(Self(out))
    }
}

/// What a request presents: the ID it acts as and the secret that proves it
/// (gRPC: the `x-chat-id` and `x-chat-secret` metadata; AMQP: the request's
/// `auth` field). Empty strings mean "not given".
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub client_id: String,
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(client_id: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            secret: secret.into(),
        }
    }
}

/// Proof that a request authenticated as [`Principal::id`]. Only the server
/// makes one (the field is private to this crate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub(crate) id: ClientId,
}

impl Principal {
    pub fn id(&self) -> &ClientId {
        &self.id
    }

    /// Refuses a request that names another ID than the authenticated one
    /// (a send `from`, a history, a subscription or an ack of someone else).
    /// An ID that is not valid at all is INVALID_ARGUMENT first, as
    /// everywhere else an ID is taken.
    pub fn acting_as(&self, raw_id: &str) -> Result<(), ChatError> {
        if raw_id == self.id.as_str() {
            return Ok(());
        }
        ClientId::validate(raw_id)?;
        Err(ChatError::PermissionDenied {
            principal: self.id.clone(),
            acting_as: raw_id.to_owned(),
        })
    }
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_random_hex_and_verify() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(Secret::parse(a.expose()).is_ok());
        let h = a.hash();
        assert!(h.verify(a.expose()));
        assert!(!h.verify(b.expose()));
        assert!(!h.verify(""));
        assert!(!format!("{a:?}").contains(a.expose()), "Debug hides it");
    }

    #[test]
    fn hash_hex_round_trips_and_rejects_junk() {
        let h = SecretHash::of("hunter2");
        // SHA-256("hunter2"), so the stored form is the standard one.
        assert_eq!(
            h.to_hex(),
            "f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7"
        );
        assert_eq!(SecretHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(SecretHash::from_hex("abc"), None);
        assert_eq!(SecretHash::from_hex(&"zz".repeat(32)), None);
        assert_eq!(SecretHash::from_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn secret_shape_is_checked() {
        for bad in [
            "",
            "has space",
            "tab\t",
            "ñ",
            &"x".repeat(MAX_SECRET_LEN + 1),
        ] {
            let err = Secret::parse(bad).unwrap_err();
            assert_eq!(err.code(), crate::ErrorCode::Unauthenticated, "{bad:?}");
        }
        assert!(Secret::parse("correct-horse!battery~staple").is_ok());
    }

    #[test]
    fn a_principal_acts_only_as_itself() {
        let p = Principal {
            id: ClientId::parse("alice").unwrap(),
        };
        assert!(p.acting_as("alice").is_ok());
        let err = p.acting_as("bob").unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::PermissionDenied);
        assert!(err.to_string().contains("alice") && err.to_string().contains("bob"));
    }
}

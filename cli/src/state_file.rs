//! The CLI's per-user state file: the secret that proves the client's ID,
//! and the last sequence number it showed.
//!
//! One JSON file per server endpoint and ID, under the XDG state directory:
//! `$XDG_STATE_HOME/chatbench/` (or `~/.local/state/chatbench/`), named
//! after the endpoint (without any password) and the ID, e.g.
//! `http_127.0.0.1_50051--alice.json`. It is created with mode 0600 in a
//! 0700 directory, and always replaced atomically (a temporary file, then
//! `rename`), so a client killed in the middle leaves the old file or the
//! new one, never half of one.
//!
//! The secret is kept only when the client generated it: a secret given
//! with `--secret` (or `CHAT_SECRET`) stays where the user keeps it.
//!
//! `last_shown_seq` closes the one window the server cannot: a client
//! killed after showing a message and before its acknowledgement reached
//! the server would get it again and show it twice. The CLI writes the seq
//! of what it showed here (to the OS, like the server's default
//! durability: it survives a kill of the client, not of the machine)
//! *before* it acknowledges, and the next run starts its stream after it.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use chat_core::ClientId;
use chat_core::Secret;

/// Directory name under the XDG state directory.
const APP_DIR: &str = "chatbench";
/// Longest endpoint part of a file name (the rest of a long URL is cut).
const MAX_KEY_LEN: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "cannot find a state directory: neither XDG_STATE_HOME nor HOME is set; set one, or pass --secret"
    )]
    NoDirectory,
    #[error("client state file {path}: {source}; fix or remove it, or pass --secret")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("client state file {path} is not valid ({why}); fix or remove it")]
    Invalid { path: String, why: String },
}

/// What is on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Contents {
    /// The ID this file is for (a check against a renamed file).
    id: String,
    /// The endpoint, as the user gave it (password removed).
    endpoint: String,
    /// The generated secret; absent when the user supplies one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    /// Highest seq this client has shown.
    #[serde(default)]
    last_shown_seq: u64,
}

/// An open state file: its contents in memory, written back on change.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    contents: Contents,
}

/// `$XDG_STATE_HOME/chatbench` or `$HOME/.local/state/chatbench`.
pub fn default_dir() -> Result<PathBuf, StateError> {
    let base = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".local").join("state"),
            None => return Err(StateError::NoDirectory),
        },
    };
    Ok(base.join(APP_DIR))
}

/// The file name for `endpoint` and `id`: the endpoint without userinfo,
/// every character outside `A-Z a-z 0-9 . -` as `_`.
pub fn file_name(endpoint: &str, id: &ClientId) -> String {
    let without_userinfo = match endpoint.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}_{rest}")
        }
        None => endpoint.to_owned(),
    };
    let mut key: String = without_userinfo
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    key.truncate(MAX_KEY_LEN);
    format!("{key}--{id}.json")
}

impl StateFile {
    /// Opens the file for `endpoint` and `id` in `dir`, creating it if
    /// missing. With `given` the user's secret is used; otherwise the file's,
    /// or a new one is generated and written before this returns (so it is
    /// kept before any server can see it).
    pub fn open(
        dir: &Path,
        endpoint: &str,
        id: &ClientId,
        given: Option<&Secret>,
    ) -> Result<(Self, Secret), StateError> {
        let path = dir.join(file_name(endpoint, id));
        let display = path.display().to_string();
        let mut contents = match std::fs::read(&path) {
            Ok(bytes) => {
                let c: Contents =
                    serde_json::from_slice(&bytes).map_err(|e| StateError::Invalid {
                        path: display.clone(),
                        why: e.to_string(),
                    })?;
                if c.id != id.as_str() {
                    return Err(StateError::Invalid {
                        path: display,
                        why: format!("it is for ID {:?}, not {id}", c.id),
                    });
                }
                c
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Contents {
                id: id.to_string(),
                endpoint: file_endpoint(endpoint),
                ..Contents::default()
            },
            Err(source) => {
                return Err(StateError::Io {
                    path: display,
                    source,
                });
            }
        };
        let (secret, changed) = match (given, &contents.secret) {
            (Some(s), _) => (s.clone(), false),
            (None, Some(raw)) => (
                Secret::parse(raw).map_err(|e| StateError::Invalid {
                    path: display.clone(),
                    why: e.to_string(),
                })?,
                false,
            ),
            (None, None) => {
                let s = Secret::generate();
                contents.secret = Some(s.expose().to_owned());
                (s, true)
            }
        };
        let file = Self { path, contents };
        if changed || !file.path.exists() {
            file.write()?;
        }
        Ok((file, secret))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Highest seq shown by an earlier run (0: none).
    pub fn last_shown_seq(&self) -> u64 {
        self.contents.last_shown_seq
    }

    /// Records that everything up to `seq` was shown; returns once the file
    /// is written (call it before acknowledging those messages).
    pub fn shown(&mut self, seq: u64) -> Result<(), StateError> {
        if seq <= self.contents.last_shown_seq {
            return Ok(());
        }
        self.contents.last_shown_seq = seq;
        self.write()
    }

    /// Replaces the file atomically: temporary file (mode 0600), rename.
    fn write(&self) -> Result<(), StateError> {
        let err = |source| StateError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        create_private_dir(dir).map_err(err)?;
        let tmp = self
            .path
            .with_extension(format!("json.{}.tmp", std::process::id()));
        let mut json = serde_json::to_vec_pretty(&self.contents).unwrap_or_default();
        json.push(b'\n');
        let written = open_private(&tmp)
            .and_then(|mut f| f.write_all(&json))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        Ok(())
    }
}

/// The endpoint as recorded in the file: no password.
fn file_endpoint(endpoint: &str) -> String {
    match endpoint.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{scheme}://{user}@{host}")
            }
            None => endpoint.to_owned(),
        },
        None => endpoint.to_owned(),
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> ClientId {
        ClientId::parse("alice").unwrap()
    }

    #[test]
    fn names_carry_the_endpoint_and_id_but_no_password() {
        assert_eq!(
            file_name("http://127.0.0.1:50051", &alice()),
            "http_127.0.0.1_50051--alice.json"
        );
        let amqp = file_name("amqp://guest:hunter2@broker:5672/%2f#chat", &alice());
        assert_eq!(amqp, "amqp_broker_5672__2f_chat--alice.json");
        assert!(!amqp.contains("hunter2") && !amqp.contains('/'));
        assert_eq!(
            file_endpoint("amqp://guest:hunter2@broker:5672/%2f"),
            "amqp://guest@broker:5672/%2f"
        );
    }

    #[test]
    fn a_generated_secret_is_kept_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("state").join("chatbench");
        let (file, secret) = StateFile::open(&sub, "http://h:1", &alice(), None).unwrap();
        assert_eq!(secret.expose().len(), 64);
        assert_eq!(file.last_shown_seq(), 0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = std::fs::metadata(&sub).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        let (_, again) = StateFile::open(&sub, "http://h:1", &alice(), None).unwrap();
        assert_eq!(again, secret, "the same secret next time");
        let (_, other) = StateFile::open(&sub, "http://other:1", &alice(), None).unwrap();
        assert_ne!(other, secret, "another server, another file");
    }

    #[test]
    fn a_given_secret_wins_and_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let given = Secret::parse("my-own-secret").unwrap();
        let (file, secret) = StateFile::open(dir.path(), "e", &alice(), Some(&given)).unwrap();
        assert_eq!(secret, given);
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(!text.contains("my-own-secret"), "{text}");
    }

    #[test]
    fn the_last_shown_seq_survives_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, _) = StateFile::open(dir.path(), "e", &alice(), None).unwrap();
        file.shown(5).unwrap();
        file.shown(3).unwrap();
        let (file, _) = StateFile::open(dir.path(), "e", &alice(), None).unwrap();
        assert_eq!(file.last_shown_seq(), 5);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");
    }

    #[test]
    fn a_broken_or_foreign_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name("e", &alice()));
        std::fs::write(&path, "{ not json").unwrap();
        let err = StateFile::open(dir.path(), "e", &alice(), None).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        std::fs::write(&path, r#"{"id":"bob","endpoint":"e"}"#).unwrap();
        let err = StateFile::open(dir.path(), "e", &alice(), None).unwrap_err();
        assert!(err.to_string().contains("bob"), "{err}");
    }
}

//! Where a run happened: the machine, the code revision, the broker version.
//! Stored with every row, so a figure in the report can be traced to the
//! conditions it was measured under.

use std::process::Command;

use procfs::Current as _;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The machine, in one line (`runs.csv` column `machine`).
pub fn describe() -> String {
    let cpu = procfs::CpuInfo::current()
        .ok()
        .and_then(|c| c.model_name(0).map(str::to_owned))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = procfs::Meminfo::current()
        .map(|m| m.mem_total as f64 / (1u64 << 30) as f64)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!(
        "{cpu}; {cores} cores; {mem_gib:.0} GiB; Linux {kernel}; {}",
        rustc_version()
    )
}

/// The compiler, as `rustc -V` says (it built this loadgen unless told
/// otherwise by `LOADGEN_RUSTC`, which the Docker image sets).
fn rustc_version() -> String {
    if let Ok(v) = std::env::var("LOADGEN_RUSTC") {
        return v;
    }
    Command::new("rustc")
        .arg("-V")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "rustc unknown".into())
}

/// The code revision: `git describe`-like short hash, `-dirty` when the
/// work tree has changes; `LOADGEN_GIT_REV` when there is no git (Docker).
pub fn git_revision() -> String {
    if let Ok(v) = std::env::var("LOADGEN_GIT_REV") {
        return v;
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short=10", "HEAD"]) {
        Some(rev) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{rev}-dirty") } else { rev }
        }
        None => "unknown".into(),
    }
}

/// The broker's product and version from its `connection.start` frame (the
/// server properties), read by opening the protocol and closing at once.
/// lapin does not expose the server properties, hence this small reader.
pub async fn rabbitmq_version(amqp_url: &str) -> Option<String> {
    // The first node of a list speaks for the cluster.
    let first = amqp_url.split(',').next()?.trim();
    let rest = first.split_once("://")?.1;
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let hostport = hostport.split('/').next()?;
    let addr = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5672")
    };
    let read = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"AMQP\x00\x00\x09\x01").await.ok()?;
        let mut buf = vec![0u8; 4096];
        let mut len = 0;
        while len < buf.len() {
            let n = s.read(&mut buf[len..]).await.ok()?;
            if n == 0 {
                break;
            }
            len += n;
            if find_version(&buf[..len]).is_some() {
                break;
            }
        }
        find_version(&buf[..len])
    };
    tokio::time::timeout(Duration::from_secs(3), read)
        .await
        .ok()
        .flatten()
}

/// The `product` and `version` long strings of a server-properties table.
fn find_version(frame: &[u8]) -> Option<String> {
    let field = |name: &[u8]| {
        let mut key = vec![name.len() as u8];
        key.extend_from_slice(name);
        key.push(b'S');
        let at = frame.windows(key.len()).position(|w| w == key)? + key.len();
        let len = u32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?) as usize;
        let value = frame.get(at + 4..at + 4 + len)?;
        Some(String::from_utf8_lossy(value).into_owned())
    };
    let version = field(b"version")?;
    let product = field(b"product").unwrap_or_else(|| "broker".into());
    Some(format!("{product} {version}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_read_from_server_properties() {
        let mut frame = b"\x01\x00\x00junk".to_vec();
        for (k, v) in [("product", "RabbitMQ"), ("version", "3.10.8")] {
            frame.push(k.len() as u8);
            frame.extend_from_slice(k.as_bytes());
            frame.push(b'S');
            frame.extend_from_slice(&(v.len() as u32).to_be_bytes());
            frame.extend_from_slice(v.as_bytes());
        }
        assert_eq!(find_version(&frame).as_deref(), Some("RabbitMQ 3.10.8"));
        assert_eq!(find_version(b"nothing here"), None);
    }

    #[test]
    fn the_machine_line_names_cores_and_kernel() {
        let d = describe();
        assert!(d.contains("cores") && d.contains("Linux"), "{d}");
    }
}

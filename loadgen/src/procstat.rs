//! CPU and memory of the processes in a run, read from /proc.
//!
//! CPU% is (user + system ticks over the measured window) / window, so 100%
//! is one core fully busy and this 2-core machine tops out at 200%. Peak RSS
//! is the kernel's high-water mark (VmHWM) since the process started; for a
//! server reused across the points of a sweep it is the peak so far.

use std::time::Instant;

use procfs::process::Process;

/// One process being watched.
#[derive(Debug)]
pub struct Watched {
    pub pid: i32,
    start: Option<(u64, Instant)>,
    rss_start_kb: u64,
}

/// What was measured of one process over a window.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// Percent of one core over the window.
    pub cpu_percent: f64,
    /// Peak resident set size so far, in KiB.
    pub peak_rss_kb: u64,
    /// Resident set size at the end of the window, in KiB.
    pub rss_kb: u64,
    /// Resident set size when the window began, in KiB.
    pub rss_start_kb: u64,
}

fn ticks(pid: i32) -> Option<u64> {
    let stat = Process::new(pid).ok()?.stat().ok()?;
    Some(stat.utime + stat.stime)
}

impl Watched {
    pub fn new(pid: i32) -> Self {
        Self {
            pid,
            start: None,
            rss_start_kb: 0,
        }
    }

    pub fn myself() -> Self {
        Self::new(std::process::id() as i32)
    }

    pub fn begin(&mut self) {
        self.start = ticks(self.pid).map(|t| (t, Instant::now()));
        self.rss_start_kb = Process::new(self.pid)
            .and_then(|p| p.status())
            .ok()
            .and_then(|s| s.vmrss)
            .unwrap_or(0);
    }

    /// Usage since [`Watched::begin`]; `None` if the process is gone.
    pub fn end(&self) -> Option<Usage> {
        let (t0, at) = self.start?;
        let t1 = ticks(self.pid)?;
        let secs = at.elapsed().as_secs_f64();
        let status = Process::new(self.pid).ok()?.status().ok()?;
        let cpu = (t1.saturating_sub(t0)) as f64 / procfs::ticks_per_second() as f64;
        Some(Usage {
            cpu_percent: if secs > 0.0 { 100.0 * cpu / secs } else { 0.0 },
            peak_rss_kb: status.vmhwm.unwrap_or(0),
            rss_kb: status.vmrss.unwrap_or(0),
            rss_start_kb: self.rss_start_kb,
        })
    }
}

/// The RabbitMQ node on this host (its Erlang VM, `beam.smp`), if one runs
/// here (a broker in a local container counts: its processes show in /proc).
pub fn find_broker() -> Option<i32> {
    let mut best: Option<(i32, u64)> = None;
    for p in procfs::process::all_processes().ok()?.flatten() {
        let Ok(stat) = p.stat() else { continue };
        if stat.comm != "beam.smp" {
            continue;
        }
        let Ok(cmdline) = p.cmdline() else { continue };
        if !cmdline.iter().any(|a| a.contains("rabbit")) {
            continue;
        }
        if best.is_none_or(|(_, rss)| stat.rss > rss) {
            best = Some((p.pid, stat.rss));
        }
    }
    best.map(|(pid, _)| pid)
}

/// The most files the local broker may open (each AMQP connection takes
/// one; RabbitMQ keeps some for its own files), if it runs here.
pub fn broker_open_file_limit(pid: i32) -> Option<u64> {
    let limits = Process::new(pid).ok()?.limits().ok()?;
    match limits.max_open_files.soft_limit {
        procfs::process::LimitValue::Value(v) => Some(v),
        procfs::process::LimitValue::Unlimited => None,
    }
}

/// Connections a RabbitMQ open-file limit allows, roughly: the broker keeps
/// about a fifth of its limit for its own files.
pub fn connection_budget(open_files: u64) -> u64 {
    open_files * 4 / 5
}

/// Why the local broker cannot take `connections`, if it cannot.
pub fn broker_capacity(connections: u64) -> Option<String> {
    let pid = find_broker()?;
    let limit = broker_open_file_limit(pid)?;
    let budget = connection_budget(limit);
    (connections > budget).then(|| {
        format!(
            "the local RabbitMQ (pid {pid}) may open {limit} files, about {budget} connections, and this run needs {connections}: \
             raise the limit of the user it runs as (Debian's package: `echo 'rabbitmq - nofile 20000' > /etc/security/limits.d/rabbitmq.conf`, then `rabbitmqctl stop; rabbitmq-server -detached`), \
             or use the compose broker (its `ulimits` allow 16384), or run fewer AMQP clients"
        )
    })
}

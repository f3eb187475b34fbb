//! What a run leaves behind: a row in `results/runs.csv` (appended, columns
//! stable and documented in `docs/results.md`), the latency distribution of
//! the run under `results/hist/` (a percentile CSV for plots and the raw
//! HDR histograms for `loadgen merge`), and a table on stdout.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// One run, as a row of `results/runs.csv`. Field order is the column
/// order; add new columns at the end only, and document them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
// Columns an older loadgen did not write (columns are only ever added at
// the end) read as empty, so `plot` and `merge` read its files too.
#[serde(default)]
pub struct Row {
    pub run_id: String,
    pub started_at: String,
    pub experiment: String,
    pub stack: String,
    pub clients: usize,
    pub pattern: String,
    pub model: String,
    pub offered_rate: Option<f64>,
    pub window: Option<u32>,
    pub payload_bytes: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub seed: u64,
    pub sent: u64,
    pub accepted: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub delivered_unaccepted: u64,
    pub behind_schedule: u64,
    pub errors: u64,
    pub error_kinds: String,
    pub reconnects: u64,
    pub send_rate: f64,
    pub delivery_rate: f64,
    pub ceiling_ratio: Option<f64>,
    pub e2e_p50_us: u64,
    pub e2e_p90_us: u64,
    pub e2e_p99_us: u64,
    pub e2e_p999_us: u64,
    pub e2e_max_us: u64,
    pub e2e_mean_us: f64,
    pub e2e_count: u64,
    pub accept_p50_us: u64,
    pub accept_p90_us: u64,
    pub accept_p99_us: u64,
    pub accept_p999_us: u64,
    pub accept_max_us: u64,
    pub setup_p50_ms: f64,
    pub setup_max_ms: f64,
    pub drain_s: f64,
    pub loadgen_cpu_pct: Option<f64>,
    pub loadgen_peak_rss_mb: Option<f64>,
    pub server_cpu_pct: Option<f64>,
    pub server_peak_rss_mb: Option<f64>,
    pub server_rss_mb: Option<f64>,
    pub broker_cpu_pct: Option<f64>,
    pub broker_peak_rss_mb: Option<f64>,
    pub server_settings: String,
    pub shard: String,
    pub git_rev: String,
    pub machine: String,
    pub broker_version: String,
    pub fault: String,
    pub fault_at_s: Option<f64>,
    pub fault_downtime_s: Option<f64>,
    pub recovery_s: Option<f64>,
    pub fault_max_e2e_us: Option<u64>,
    /// The server's RSS when the measured window began: with
    /// `server_rss_mb` (at its end) it says whether memory stays flat.
    #[serde(default)]
    pub server_rss_start_mb: Option<f64>,
    /// What the server itself counted during the run (its `/metrics`,
    /// scraped before and after; spawned servers only).
    pub server_accepted: Option<u64>,
    pub server_delivered: Option<u64>,
    pub server_acked: Option<u64>,
    pub server_refused: Option<u64>,
    pub server_pending: Option<u64>,
    pub server_journal_batch_mean: Option<f64>,
    pub server_append_mean_us: Option<f64>,
    pub server_append_p99_us: Option<f64>,
}

impl Row {
    /// True when the system kept up: everything accepted was delivered and
    /// the delivery rate reached 90% of what was offered.
    pub fn kept_up(&self) -> bool {
        let rate_ok = self
            .offered_rate
            .is_none_or(|r| self.delivery_rate >= 0.9 * r);
        rate_ok && self.lost == 0 && self.errors == 0
    }

    /// Fills the latency columns from the run's histograms.
    pub fn set_latencies(&mut self, e2e: &Histogram<u64>, accept: &Histogram<u64>) {
        [
            self.e2e_p50_us,
            self.e2e_p90_us,
            self.e2e_p99_us,
            self.e2e_p999_us,
            self.e2e_max_us,
        ] = percentiles(e2e);
        [
            self.accept_p50_us,
            self.accept_p90_us,
            self.accept_p99_us,
            self.accept_p999_us,
            self.accept_max_us,
        ] = percentiles(accept);
        self.e2e_mean_us = if e2e.is_empty() { 0.0 } else { e2e.mean() };
        self.e2e_count = e2e.len();
    }

    /// The `error_kinds` column: `kind=count;…`.
    pub fn kinds_column(kinds: &std::collections::BTreeMap<String, u64>) -> String {
        kinds
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Identifies the same point on another stack (for ceiling ratios).
    pub fn point_key(&self) -> String {
        format!(
            "{}|{}|{}|{}|{:?}|{:?}|{}",
            self.experiment,
            self.clients,
            self.pattern,
            self.payload_bytes,
            self.offered_rate,
            self.window,
            self.shard
        )
    }
}

/// Fills the percentile columns of a histogram (`e2e` or `accept`).
pub fn percentiles(h: &Histogram<u64>) -> [u64; 5] {
    if h.is_empty() {
        return [0; 5];
    }
    [
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
    ]
}

/// The results folder and its files.
#[derive(Clone, Debug)]
pub struct Results {
    pub dir: PathBuf,
}

impl Results {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn runs_csv(&self) -> PathBuf {
        self.dir.join("runs.csv")
    }

    pub fn hist_dir(&self) -> PathBuf {
        self.dir.join("hist")
    }

    /// Appends `row` to runs.csv, writing the header to a new file and
    /// refusing a file whose header differs (columns are stable; an old file
    /// from another version must be moved aside, not silently mixed).
    pub fn append(&self, row: &Row) -> anyhow::Result<()> {
        let path = self.runs_csv();
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let expected = header();
        let exists = path.metadata().map(|m| m.len() > 0).unwrap_or(false);
        if exists {
            let mut r = csv::Reader::from_path(&path)?;
            let found: Vec<String> = r.headers()?.iter().map(str::to_owned).collect();
            if found.len() < expected.len() && expected.starts_with(&found) {
                self.add_columns(found.len())?;
            } else if found != expected {
                bail!(
                    "{} has other columns than this loadgen writes; move it aside (its rows stay valid for the loadgen that wrote them)",
                    path.display()
                );
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut w = csv::WriterBuilder::new()
            .has_headers(!exists)
            .from_writer(file);
        w.serialize(row)?;
        w.flush()?;
        Ok(())
    }

    /// Rewrites runs.csv, written by an older loadgen with only the first
    /// `old` columns, with today's header: its rows keep their values and
    /// read the new columns as empty. Atomic (a new file renamed over it).
    fn add_columns(&self, old: usize) -> anyhow::Result<()> {
        let path = self.runs_csv();
        let rows = self.rows()?;
        let tmp = self.dir.join("runs.csv.tmp");
        let mut w = csv::Writer::from_path(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        for row in &rows {
            w.serialize(row)?;
        }
        w.flush()?;
        drop(w);
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        tracing::info!(
            "{}: added the columns after its {old} ({} rows kept)",
            path.display(),
            rows.len()
        );
        Ok(())
    }

    /// Every row of runs.csv.
    pub fn rows(&self) -> anyhow::Result<Vec<Row>> {
        let path = self.runs_csv();
        let mut r = csv::Reader::from_path(&path)
            .with_context(|| format!("cannot read {} (run `loadgen run` first)", path.display()))?;
        r.deserialize()
            .collect::<Result<_, _>>()
            .with_context(|| format!("{} is malformed", path.display()))
    }

    /// Writes the run's histograms: `<id>.e2e.hdr` / `<id>.accept.hdr`
    /// (HDR V2, for merging) and `<id>.csv`, the percentile distribution of
    /// end-to-end latency (for plots).
    pub fn write_histograms(
        &self,
        run_id: &str,
        e2e: &Histogram<u64>,
        accept: &Histogram<u64>,
    ) -> anyhow::Result<()> {
        let dir = self.hist_dir();
        std::fs::create_dir_all(&dir)?;
        for (kind, h) in [("e2e", e2e), ("accept", accept)] {
            let mut buf = Vec::new();
            V2Serializer::new()
                .serialize(h, &mut buf)
                .map_err(|e| anyhow::anyhow!("cannot encode the {kind} histogram: {e:?}"))?;
            std::fs::write(dir.join(format!("{run_id}.{kind}.hdr")), buf)?;
        }
        let mut w = csv::Writer::from_path(dir.join(format!("{run_id}.csv")))?;
        w.write_record(["percentile", "latency_us", "count"])?;
        if !e2e.is_empty() {
            for v in e2e.iter_quantiles(4) {
                w.write_record([
                    format!("{:.6}", v.quantile_iterated_to() * 100.0),
                    v.value_iterated_to().to_string(),
                    v.count_since_last_iteration().to_string(),
                ])?;
            }
        }
        w.flush()?;
        Ok(())
    }

    /// Writes `<id>.timeline.csv`: the run in 100 ms buckets.
    pub fn write_timeline(&self, run_id: &str, t: &crate::record::Timeline) -> anyhow::Result<()> {
        let dir = self.hist_dir();
        std::fs::create_dir_all(&dir)?;
        let mut w = csv::Writer::from_path(dir.join(format!("{run_id}.timeline.csv")))?;
        w.write_record(["t_s", "accepted", "errors", "delivered", "max_e2e_us"])?;
        for (t_s, a, e, d, m) in t.rows() {
            w.write_record([
                format!("{t_s:.1}"),
                a.to_string(),
                e.to_string(),
                d.to_string(),
                m.to_string(),
            ])?;
        }
        w.flush()?;
        Ok(())
    }

    pub fn read_histogram(&self, run_id: &str, kind: &str) -> anyhow::Result<Histogram<u64>> {
        let path = self.hist_dir().join(format!("{run_id}.{kind}.hdr"));
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| anyhow::anyhow!("{} is not an HDR histogram: {e:?}", path.display()))
    }
}

/// runs.csv's header, from [`Row`]'s fields.
pub fn header() -> Vec<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.serialize(Row::default()).expect("a row serialises");
    let bytes = w.into_inner().expect("in memory");
    let mut r = csv::Reader::from_reader(bytes.as_slice());
    r.headers()
        .expect("header")
        .iter()
        .map(str::to_owned)
        .collect()
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// The runs side by side, one line each (stdout).
pub fn print_table(rows: &[Row]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<10} {:>7} {:<8} {:>9} {:>7} {:>10} {:>10} {:>6} {:>8} {:>8} {:>8} {:>6} {:>5} {:>5} {:>7} {:>7} {:>7}",
        "stack",
        "clients",
        "pattern",
        "load",
        "bytes",
        "sent/s",
        "deliv/s",
        "ceil",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "lost",
        "dup",
        "err",
        "srv cpu",
        "brk cpu",
        "lg cpu"
    )?;
    for r in rows {
        let load = match (r.offered_rate, r.window) {
            (Some(rate), _) => format!("{rate:.0}/s"),
            (_, Some(w)) => format!("w{w}"),
            _ => "-".into(),
        };
        writeln!(
            out,
            "{:<10} {:>7} {:<8} {:>9} {:>7} {:>10.0} {:>10.0} {:>6} {:>8} {:>8} {:>8} {:>6} {:>5} {:>5} {:>7} {:>7} {:>7}",
            r.stack,
            r.clients,
            r.pattern,
            load,
            r.payload_bytes,
            r.send_rate,
            r.delivery_rate,
            r.ceiling_ratio
                .map_or_else(|| "-".into(), |c| format!("{:.0}%", c * 100.0)),
            r.e2e_p50_us,
            r.e2e_p99_us,
            r.e2e_p999_us,
            r.lost,
            r.duplicates,
            r.errors,
            opt(r.server_cpu_pct, 0),
            opt(r.broker_cpu_pct, 0),
            opt(r.loadgen_cpu_pct, 0),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The columns are a contract (docs/results.md, the plots, the report):
    /// changing them must be deliberate.
    #[test]
    fn the_csv_header_is_stable() {
        let h = header();
        assert_eq!(h.len(), 68);
        assert_eq!(&h[..4], ["run_id", "started_at", "experiment", "stack"]);
        assert!(h.contains(&"e2e_p999_us".to_owned()));
        assert_eq!(h[59], "server_rss_start_mb");
        assert_eq!(h.last().map(String::as_str), Some("server_append_p99_us"));
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/results.md"))
                .unwrap();
        for column in &h {
            assert!(
                doc.contains(&format!("`{column}`")),
                "docs/results.md does not document {column}"
            );
        }
    }

    #[test]
    fn rows_append_under_one_header_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let results = Results::new(dir.path());
        for i in 0..3 {
            let row = Row {
                run_id: format!("r{i}"),
                offered_rate: Some(100.0),
                ..Row::default()
            };
            results.append(&row).unwrap();
        }
        let rows = results.rows().unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].run_id, "r2");
        assert_eq!(rows[0].offered_rate, Some(100.0));
        assert_eq!(rows[0].window, None);
        let text = std::fs::read_to_string(results.runs_csv()).unwrap();
        assert_eq!(text.matches("run_id").count(), 1);
    }

    #[test]
    fn a_file_of_an_older_loadgen_gets_the_new_columns_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let results = Results::new(dir.path());
        let old = Row {
            run_id: "old".into(),
            server_rss_start_mb: Some(7.5),
            ..Row::default()
        };
        let mut w = csv::Writer::from_writer(Vec::new());
        w.serialize(&old).unwrap();
        let text = String::from_utf8(w.into_inner().unwrap()).unwrap();
        // The same file as the loadgen before the server_* metric columns wrote it.
        let cut: String = text
            .lines()
            .map(|l| l.split(',').take(60).collect::<Vec<_>>().join(",") + "\n")
            .collect();
        assert!(
            cut.starts_with("run_id,")
                && cut
                    .lines()
                    .next()
                    .unwrap()
                    .ends_with(",server_rss_start_mb")
        );
        std::fs::write(results.runs_csv(), cut).unwrap();

        let new = Row {
            run_id: "new".into(),
            server_accepted: Some(42),
            ..Row::default()
        };
        results.append(&new).unwrap();
        let rows = results.rows().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].run_id, "old");
        assert_eq!(rows[0].server_rss_start_mb, Some(7.5));
        assert_eq!(rows[0].server_accepted, None);
        assert_eq!(rows[1].server_accepted, Some(42));
        let text = std::fs::read_to_string(results.runs_csv()).unwrap();
        assert!(
            text.lines()
                .next()
                .unwrap()
                .ends_with(",server_append_p99_us")
        );
    }

    #[test]
    fn a_file_with_other_columns_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let results = Results::new(dir.path());
        std::fs::write(results.runs_csv(), "a,b\n1,2\n").unwrap();
        let err = results.append(&Row::default()).unwrap_err().to_string();
        assert!(err.contains("move it aside"), "{err}");
    }

    #[test]
    fn histograms_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let results = Results::new(dir.path());
        let mut h = crate::record::histogram();
        for v in [10, 20, 30, 1000] {
            h.record(v).unwrap();
        }
        results.write_histograms("x", &h, &h).unwrap();
        let back = results.read_histogram("x", "e2e").unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back.max(), h.max());
        let csv = std::fs::read_to_string(results.hist_dir().join("x.csv")).unwrap();
        assert!(csv.starts_with("percentile,latency_us,count"));
    }
}

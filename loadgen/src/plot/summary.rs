//! results/summary.md: the numbers behind each chart, one table per chart,
//! every line carrying its run_id, so a report can quote a figure and a
//! reader can find the row (and its histogram) it came from.

use std::fmt::Write as _;
use std::path::Path;

use crate::output::Row;

use super::select::{Selection, durability, point};

/// What one chart drew (or why it was not drawn).
#[derive(Debug)]
pub struct Section {
    pub file: &'static str,
    pub title: &'static str,
    pub rows: Vec<Row>,
    pub skipped: Option<String>,
}

fn opt_ratio(r: &Row) -> String {
    r.ceiling_ratio
        .map_or_else(|| "-".into(), |c| format!("{:.0}%", c * 100.0))
}

fn table(out: &mut String, rows: &[Row]) {
    out.push_str(
        "| stack | point | durability | delivered msgs/s | p50 µs | p99 µs | p99.9 µs | ceiling ratio | kept up | run_id |\n\
         |---|---|---|---:|---:|---:|---:|---:|---|---|\n",
    );
    // A chart that mixes experiments (durability) says where each row is from.
    let mixed = rows.iter().any(|r| r.experiment != rows[0].experiment);
    for r in rows {
        let from = if mixed {
            format!(" ({})", r.experiment)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {} | {}{from} | {} | {:.0} | {} | {} | {} | {} | {} | `{}` |",
            r.stack,
            point(r),
            match durability(r) {
                "" => "-",
                d => d,
            },
            r.delivery_rate,
            r.e2e_p50_us,
            r.e2e_p99_us,
            r.e2e_p999_us,
            opt_ratio(r),
            if r.kept_up() { "yes" } else { "no" },
            r.run_id
        );
    }
}

/// Fault runs: what each fault cost each stack, and the proof (lost and
/// duplicates at 0).
fn fault_table(out: &mut String, rows: &[Row]) {
    out.push_str(
        "| fault | stack | point | downtime s | recovery s | peak latency ms | lost | dup | errors | delivered msgs/s | run_id |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let opt = |v: Option<f64>, none: &str| v.map_or_else(|| none.to_owned(), |v| format!("{v}"));
    for r in rows {
        let peak = r.fault_max_e2e_us.map(|us| (us as f64 / 1e3).round());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | `{}` |",
            r.fault,
            r.stack,
            point(r),
            opt(r.fault_downtime_s, "-"),
            opt(r.recovery_s, "not recovered"),
            opt(peak, "-"),
            r.lost,
            r.duplicates,
            r.errors,
            r.delivery_rate,
            r.run_id
        );
    }
}

/// The Markdown text of the summary.
pub fn render(sel: &Selection, total: usize, sections: &[Section]) -> String {
    let mut out = String::from("# Chart numbers\n\n");
    let _ = writeln!(
        out,
        "Written by `loadgen plot` from `runs.csv` ({total} rows). Each point shows its most \
         recent run ({} older reruns and {} shard rows left out). Latencies are end-to-end \
         (scheduled or actual send → shown to the recipient), in µs; \"kept up\" means no loss, \
         no errors and, in open loop, at least 90% of the offered rate delivered.\n",
        sel.superseded, sel.shards
    );
    let mut revs: Vec<&str> = sections
        .iter()
        .flat_map(|s| s.rows.iter().map(|r| r.git_rev.as_str()))
        .filter(|r| !r.is_empty())
        .collect();
    revs.sort_unstable();
    revs.dedup();
    if !revs.is_empty() {
        let _ = writeln!(
            out,
            "Code revisions of these rows: `{}`.\n",
            revs.join("`, `")
        );
    }
    for s in sections {
        let _ = writeln!(out, "## {} (`{}`)\n", s.title, s.file);
        match &s.skipped {
            Some(why) => {
                let _ = writeln!(out, "Not drawn: {why}.\n");
            }
            None if s.rows.iter().all(|r| !r.fault.is_empty()) => {
                fault_table(&mut out, &s.rows);
                out.push('\n');
            }
            None => {
                table(&mut out, &s.rows);
                out.push('\n');
            }
        }
    }
    out
}

pub fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

//! `loadgen plot`: the charts of a results folder, drawn from its
//! runs.csv and hist/ files into PNGs next to them, plus summary.md, the
//! numbers behind each chart with their run_ids.
//!
//! Why it lives in loadgen: the charts are part of the measurement. They
//! are regenerated from the CSV by the same binary that wrote it, so a
//! report's figures can always be redrawn from the committed rows, and the
//! file names below are a contract the report links to.
//!
//! * Each point is drawn from its most recent run (`select`): a rerun
//!   after a fix replaces the old figure.
//! * A chart whose rows are missing is skipped with one line on stderr
//!   (and its stale PNG removed), never an error: a quick or partial sweep
//!   still plots what it has.
//! * PNGs only need the font compiled into the binary (`style`); no
//!   system font libraries.
//!
//! Modules: `axis` (ticks and units), `style` (font, colours, sizes),
//! `draw` (lines, markers, bars), `lines` and `hdr` (line charts),
//! `bars` (bar charts), `timeline` (the fault timeline), `summary`
//! (summary.md).

use std::path::{Path, PathBuf};

use crate::output::{Results, Row};

mod axis;
mod bars;
mod draw;
mod hdr;
mod lines;
mod select;
mod style;
mod summary;
#[cfg(test)]
mod tests;
mod timeline;

/// What a chart function gets: the selected rows and where to draw.
pub struct Ctx<'a> {
    pub results: &'a Results,
    pub rows: &'a [Row],
    pub path: &'a Path,
}

/// Draws a chart and returns the rows it used (none: nothing was drawn).
type DrawFn = fn(&Ctx<'_>) -> anyhow::Result<Vec<Row>>;

/// A chart: its file (the contract), its title, what it needs, how to draw.
struct Spec {
    file: &'static str,
    title: &'static str,
    needs: &'static str,
    draw: DrawFn,
}

const CHARTS: [Spec; 8] = [
    Spec {
        file: "latency-vs-load.png",
        title: "Latency vs offered load",
        needs: "no open-loop rows with experiment=latency-vs-load",
        draw: lines::latency_vs_load,
    },
    Spec {
        file: "throughput-vs-clients.png",
        title: "Throughput vs clients",
        needs: "no rows with experiment=throughput-vs-clients",
        draw: lines::throughput_vs_clients,
    },
    Spec {
        file: "latency-distribution.png",
        title: "Latency distribution (ping-pong)",
        needs: "no experiment=ping-pong rows with a hist/<run_id>.csv",
        draw: hdr::latency_distribution,
    },
    Spec {
        file: "payload.png",
        title: "Payload size",
        needs: "no rows with experiment=payload",
        draw: lines::payload_chart,
    },
    Spec {
        file: "fan-in.png",
        title: "Fan-in",
        needs: "no rows with experiment=fan-in",
        draw: bars::fan_in,
    },
    Spec {
        file: "durability.png",
        title: "Durability: os vs fsync",
        needs: "no rows with experiment=durability-fsync",
        draw: bars::durability_chart,
    },
    Spec {
        file: "efficiency.png",
        title: "Efficiency (share of the ceiling)",
        needs: "no throughput-vs-clients chat rows with a ceiling_ratio",
        draw: bars::efficiency,
    },
    Spec {
        file: "fault-timeline.png",
        title: "Fault timeline",
        needs: "no rows with a fault and a hist/<run_id>.timeline.csv",
        draw: timeline::fault_timeline,
    },
];

/// What `plot` wrote and skipped.
#[derive(Debug, Default)]
pub struct Outcome {
    pub written: Vec<PathBuf>,
    /// File names of the charts not drawn.
    pub skipped: Vec<&'static str>,
    pub summary: PathBuf,
}

/// Draws every chart it has rows for into `results.dir`, and summary.md.
pub fn plot(results: &Results) -> anyhow::Result<Outcome> {
    style::register_font_once()?;
    let all = results.rows()?;
    let total = all.len();
    let sel = select::latest(all);
    eprintln!(
        "loadgen plot: {total} rows in {}: {} used (latest run of each point; {} older reruns, {} shard rows left out)",
        results.runs_csv().display(),
        sel.rows.len(),
        sel.superseded,
        sel.shards
    );
    let mut outcome = Outcome::default();
    let mut sections = Vec::new();
    for spec in &CHARTS {
        sections.push(draw_one(results, &sel.rows, spec, &mut outcome)?);
    }
    outcome.summary = results.dir.join("summary.md");
    summary::write(&outcome.summary, &summary::render(&sel, total, &sections))?;
    eprintln!("loadgen plot: wrote {}", outcome.summary.display());
    Ok(outcome)
}

fn draw_one(
    results: &Results,
    rows: &[Row],
    spec: &Spec,
    outcome: &mut Outcome,
) -> anyhow::Result<summary::Section> {
    let path = results.dir.join(spec.file);
    let ctx = Ctx {
        results,
        rows,
        path: &path,
    };
    let used = (spec.draw)(&ctx).map_err(|e| e.context(format!("drawing {}", spec.file)))?;
    let skipped = if used.is_empty() {
        let stale = std::fs::remove_file(&path).is_ok();
        eprintln!(
            "loadgen plot: {} skipped: {}{}",
            spec.file,
            spec.needs,
            if stale { " (removed the old one)" } else { "" }
        );
        outcome.skipped.push(spec.file);
        Some(spec.needs.to_owned())
    } else {
        eprintln!(
            "loadgen plot: {} from {} rows ({})",
            spec.file,
            used.len(),
            per_stack(&used)
        );
        outcome.written.push(path);
        None
    };
    Ok(summary::Section {
        file: spec.file,
        title: spec.title,
        rows: used,
        skipped,
    })
}

/// "grpc 4, grpc-bare 4, amqp 3": rows per stack.
fn per_stack(rows: &[Row]) -> String {
    select::stacks(rows)
        .iter()
        .map(|s| format!("{s} {}", rows.iter().filter(|r| &r.stack == s).count()))
        .collect::<Vec<_>>()
        .join(", ")
}

//! The HDR percentile plot: each ping-pong run's whole latency
//! distribution (results/hist/<run_id>.csv), percentile on the classic
//! log 1/(1-p) axis, so the tail from p90 to p99.99 gets as much room as
//! the median.

use std::path::Path;

use anyhow::Context;

use crate::output::Row;

use super::Ctx;
use super::axis::Axis;
use super::draw::{canvas, legend_auto, stack_curve, with_footer};
use super::select::experiment;
use super::style::{self, stack_label};

/// (percentile, latency µs) points of a run's distribution. The final
/// 100% point (the maximum) is placed at 1 - 1/count, where it belongs on
/// an axis that never reaches 100%.
fn read_distribution(path: &Path) -> anyhow::Result<Curve> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut raw = Vec::new();
    for rec in r.deserialize::<(f64, f64, u64)>() {
        raw.push(rec.with_context(|| format!("{} is malformed", path.display()))?);
    }
    let total: u64 = raw.iter().map(|(_, _, c)| c).sum();
    let top = 100.0 * (1.0 - 1.0 / total.max(2) as f64);
    Ok(raw.into_iter().map(|(p, v, _)| (p.min(top), v)).collect())
}

/// (percentile, latency µs) points.
type Curve = Vec<(f64, f64)>;

/// The ping-pong rows whose distribution file exists, with their points.
fn distributions(ctx: &Ctx<'_>) -> anyhow::Result<Vec<(Row, Curve)>> {
    let mut out = Vec::new();
    for row in experiment(ctx.rows, "ping-pong", |r| r.clients as f64) {
        let path = ctx.results.hist_dir().join(format!("{}.csv", row.run_id));
        if !path.exists() {
            eprintln!(
                "loadgen plot: latency-distribution: no {} (run {} left out)",
                path.display(),
                row.run_id
            );
            continue;
        }
        let pts = read_distribution(&path)?;
        if !pts.is_empty() {
            out.push((row, pts));
        }
    }
    Ok(out)
}

/// One line per stack: latency at each percentile of a ping-pong run.
pub fn latency_distribution(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Row>> {
    let runs = distributions(ctx)?;
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let all = runs.iter().flat_map(|(_, pts)| pts.iter());
    let max_p = all.clone().map(|(p, _)| *p).fold(0.0, f64::max);
    let (lo, hi) = all.fold((f64::MAX, 1.0_f64), |(lo, hi), (_, v)| {
        (lo.min(v.max(1.0)), hi.max(*v))
    });
    let root = canvas(ctx.path)?;
    let (body, foot) = with_footer(&root);
    let first = &runs[0].0;
    let title = format!(
        "Latency distribution, ping-pong ({} clients, window {}, {} B)",
        first.clients,
        first.window.unwrap_or(0),
        first.payload_bytes
    );
    let mut chart = style::chart(
        &body,
        &title,
        (Axis::percentile(max_p), "percentile (log scale of 1/(1-p))"),
        (
            Axis::log(lo, hi, style::micros),
            "end-to-end latency (log scale)",
        ),
    )?;
    let mut labels = Vec::new();
    for (row, pts) in &runs {
        let rate = style::rate(row.delivery_rate.round());
        labels.push(format!("{}: {rate} msgs/s", stack_label(&row.stack)));
        stack_curve(&mut chart, &row.stack, pts, labels.last().cloned())?;
    }
    let curves: Vec<_> = runs.iter().map(|(_, pts)| pts.clone()).collect();
    legend_auto(&mut chart, &labels, &curves)?;
    style::note(
        &foot,
        "Each line: one run's full HDR histogram (results/hist/<run_id>.csv); the last point is its maximum.",
    )?;
    root.present()?;
    Ok(runs.into_iter().map(|(r, _)| r).collect())
}

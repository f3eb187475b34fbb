//! The line charts: latency vs offered load, throughput vs clients,
//! payload size, and the HDR latency distribution of ping-pong.

use plotters::prelude::*;

use crate::output::Row;

use super::Ctx;
use super::axis::Axis;
use super::draw::{Shape, canvas, legend_auto, marker_key, markers, stack_line, with_footer};
use super::select::{distinct, experiment, stacks};
use super::style::{self, Area, colour, stack_label};

fn offered(r: &Row) -> f64 {
    r.offered_rate.unwrap_or(0.0)
}
fn clients(r: &Row) -> f64 {
    r.clients as f64
}
fn payload(r: &Row) -> f64 {
    r.payload_bytes as f64
}

/// The percentiles drawn by latency-vs-load, one marker shape each.
type Percentile = (&'static str, Shape, fn(&Row) -> u64);
const PCTS: [Percentile; 3] = [
    ("p50", Shape::Circle, |r| r.e2e_p50_us),
    ("p99", Shape::Triangle, |r| r.e2e_p99_us),
    ("p99.9", Shape::Cross, |r| r.e2e_p999_us),
];

/// Smallest and largest positive value, for a log axis (1..10 if none).
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| *v > 0.0 && v.is_finite())
        .fold((f64::MAX, 0.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if hi > 0.0 { (lo, hi) } else { (1.0, 10.0) }
}

/// What the rows have in common, for a title: "10 clients, 64 B".
fn common(rows: &[Row]) -> String {
    let c = distinct(rows, clients);
    let p = distinct(rows, payload);
    let mut parts = Vec::new();
    if let [c] = c[..] {
        parts.push(format!("{c} clients"));
    }
    if let [p] = p[..] {
        parts.push(style::bytes(p));
    }
    parts.join(", ")
}

/// Latency percentiles of each stack vs the offered rate (open loop).
pub fn latency_vs_load(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Row>> {
    let mut rows = experiment(ctx.rows, "latency-vs-load", offered);
    rows.retain(|r| r.offered_rate.is_some() && r.e2e_count > 0);
    if rows.is_empty() {
        return Ok(rows);
    }
    let (lo, hi) = span(rows.iter().flat_map(|r| PCTS.map(|(_, _, f)| f(r) as f64)));
    let root = canvas(ctx.path)?;
    let (body, foot) = with_footer(&root);
    let title = format!(
        "End-to-end latency vs offered load (open loop, {})",
        common(&rows)
    );
    let mut chart = style::chart(
        &body,
        &title,
        (
            Axis::log_at(&distinct(&rows, offered), style::rate),
            "offered load (msgs/s, log scale)",
        ),
        (
            Axis::log(lo, hi, style::micros),
            "end-to-end latency (log scale)",
        ),
    )?;
    let (mut labels, mut lines) = (Vec::new(), Vec::new());
    for stack in stacks(&rows) {
        labels.push(stack_label(&stack));
        let of: Vec<&Row> = rows.iter().filter(|r| r.stack == stack).collect();
        lines.extend(percentile_lines(&mut chart, &stack, &of)?);
    }
    for (name, shape, _) in PCTS {
        marker_key(&mut chart, name, shape, false)?;
        labels.push(name.to_owned());
    }
    labels.push("hollow: not kept up".to_owned());
    marker_key(&mut chart, &labels[labels.len() - 1], Shape::Circle, true)?;
    legend_auto(&mut chart, &labels, &lines)?;
    style::note(
        &foot,
        "Latency counts from each message's scheduled send. Hollow marker: delivery < 90% of offered, or loss/errors (saturated).",
    )?;
    root.present()?;
    Ok(rows)
}

/// One stack's p50, p99 and p99.9 lines: filled markers where the stack
/// kept up, hollow where it did not. Returns the lines drawn.
fn percentile_lines<'a, 'b: 'a>(
    chart: &mut style::Chart<'a, 'b>,
    stack: &str,
    rows: &[&Row],
) -> anyhow::Result<Vec<Vec<(f64, f64)>>> {
    let c = colour(stack);
    let mut lines = Vec::new();
    for (i, (_, shape, f)) in PCTS.iter().enumerate() {
        let pts: Vec<(f64, f64)> = rows.iter().map(|r| (offered(r), f(r) as f64)).collect();
        stack_line(chart, stack, &pts, (i == 0).then(|| stack_label(stack)))?;
        let fill = |r: &&Row| {
            if r.kept_up() {
                c.filled()
            } else {
                WHITE.filled()
            }
        };
        let filled: Vec<_> = pts.iter().copied().zip(rows.iter().map(fill)).collect();
        markers(chart, *shape, &filled)?;
        let outline: Vec<_> = pts.iter().map(|p| (*p, c.stroke_width(2))).collect();
        markers(chart, *shape, &outline)?;
        lines.push(pts);
    }
    Ok(lines)
}

/// Delivery rate of each stack vs the number of clients (closed loop).
pub fn throughput_vs_clients(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Row>> {
    let rows = experiment(ctx.rows, "throughput-vs-clients", clients);
    if rows.is_empty() {
        return Ok(rows);
    }
    let (lo, hi) = span(rows.iter().map(|r| r.delivery_rate));
    let root = canvas(ctx.path)?;
    let window = rows.first().and_then(|r| r.window).unwrap_or(0);
    let title = format!("Throughput vs clients (closed loop, window {window}, pairs)");
    let mut chart = style::chart(
        &root,
        &title,
        (
            Axis::log_at(&distinct(&rows, clients), style::count),
            "clients (log scale)",
        ),
        (
            Axis::log(lo, hi, style::rate),
            "delivered (msgs/s, log scale)",
        ),
    )?;
    let (mut labels, mut lines) = (Vec::new(), Vec::new());
    for stack in stacks(&rows) {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.stack == stack)
            .map(|r| (clients(r), r.delivery_rate))
            .collect();
        labels.push(stack_label(&stack));
        stack_line(&mut chart, &stack, &pts, labels.last().cloned())?;
        lines.push(pts);
    }
    legend_auto(&mut chart, &labels, &lines)?;
    root.present()?;
    Ok(rows)
}

/// A metric of the payload chart's panels: panel name, axis description,
/// the value of a row, and how its axis labels values.
type Metric = (
    &'static str,
    &'static str,
    fn(&Row) -> f64,
    fn(f64) -> String,
);

/// Delivery rate and p99 latency vs payload size, two panels.
pub fn payload_chart(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Row>> {
    let rows = experiment(ctx.rows, "payload", payload);
    if rows.is_empty() {
        return Ok(rows);
    }
    let root = canvas(ctx.path)?;
    let window = rows.first().and_then(|r| r.window).unwrap_or(0);
    let title = format!(
        "Payload size (closed loop, {}, window {window})",
        common(&rows)
    );
    let body = root.titled(&title, (style::FONT, style::TITLE))?;
    let (left, right) = body.split_horizontally(style::SIZE.0 / 2);
    let panels: [(&Area<'_>, Metric); 2] = [
        (
            &left,
            (
                "Delivered",
                "delivered (msgs/s, log)",
                |r| r.delivery_rate,
                style::rate,
            ),
        ),
        (
            &right,
            (
                "p99 latency",
                "end-to-end p99 (log)",
                |r| r.e2e_p99_us as f64,
                style::micros,
            ),
        ),
    ];
    for (i, (area, metric)) in panels.into_iter().enumerate() {
        // The first panel carries the legend.
        payload_panel(area, metric, &rows, i == 0)?;
    }
    root.present()?;
    Ok(rows)
}

/// One panel of the payload chart: `metric` of each stack vs payload size.
fn payload_panel(
    area: &Area<'_>,
    (name, desc, f, fmt): Metric,
    rows: &[Row],
    legend: bool,
) -> anyhow::Result<()> {
    let (lo, hi) = span(rows.iter().map(f));
    let x = Axis::log_at(&distinct(rows, payload), style::bytes);
    let mut chart = style::chart(
        area,
        name,
        (x, "payload (log scale)"),
        (Axis::log(lo, hi, fmt), desc),
    )?;
    let (mut labels, mut lines) = (Vec::new(), Vec::new());
    for stack in stacks(rows) {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.stack == stack)
            .map(|r| (payload(r), f(r)))
            .collect();
        labels.push(stack_label(&stack));
        let label = legend.then(|| stack_label(&stack));
        stack_line(&mut chart, &stack, &pts, label)?;
        lines.push(pts);
    }
    if legend {
        legend_auto(&mut chart, &labels, &lines)?;
    }
    Ok(())
}

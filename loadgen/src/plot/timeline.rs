//! The fault timeline (fault-timeline.png): what each injected fault did to
//! each chat, second by second.
//!
//! One row of panels per fault kind, from the latest run of each (fault,
//! stack): on the left the messages delivered per second (each 100 ms
//! bucket × 10), on the right the largest end-to-end latency shown in each
//! bucket (log scale), both against the time since the fault with the
//! downtime shaded. Each row's header quotes runs.csv: `recovery_s`,
//! `fault_max_e2e_us`, and `lost`/`duplicates`, which a fault run must keep
//! at 0.
//!
//! Data: results/hist/<run_id>.timeline.csv, whose `t_s` counts from the
//! run's epoch (the measured window starts at `warmup_s`), redrawn with
//! t = 0 at the fault (`warmup_s + fault_at_s`).

use std::path::Path;

use anyhow::Context;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use serde::Deserialize;

use crate::output::Row;

use super::Ctx;
use super::axis::Axis;
use super::draw::{bar_key, legend_auto, stack_curve};
use super::select::stack_rank;
use super::style::{self, Area, Chart, FONT, colour, stack_label};

/// Canvas size: up to three rows of panels.
const SIZE: (u32, u32) = (1000, 900);
/// Seconds of normal running shown before the fault.
const LEAD_S: f64 = 2.0;
/// Fault kinds in row order (any other kind follows, by name).
const FAULTS: [&str; 3] = ["kill-server", "cut-connections", "restart-broker"];
/// The downtime shade (its legend key is the same colour).
const SHADE: RGBColor = RGBColor(222, 222, 222);
/// Line height of a row's header: one line per stack.
const LINE_PX: u32 = 22;
const X_DESC: &str = "seconds since the fault";
/// The footer, two lines.
const NOTE: [&str; 2] = [
    "Delivered: messages shown per 100 ms × 10. Latency: the largest end-to-end (from the scheduled send) per 100 ms; gap: none shown.",
    "Shaded: fault downtime. Coloured dashes: recovery_s (deliveries back to 90% of normal). Grey dashes: the load stops; later deliveries are the drain.",
];

/// Width of one timeline bucket, seconds.
fn bucket_s() -> f64 {
    crate::record::TICK.as_secs_f64()
}

/// One line of a timeline.csv (other columns ignored).
#[derive(Debug, Deserialize)]
struct Line {
    t_s: f64,
    delivered: u32,
    max_e2e_us: u32,
}

/// One bucket, `t` in seconds since the fault.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    t: f64,
    delivered: u32,
    max_e2e_us: u32,
}

/// A fault run and its timeline.
struct Run {
    row: Row,
    buckets: Vec<Bucket>,
}

/// Row order of a fault kind.
fn fault_rank(fault: &str) -> (usize, &str) {
    let known = FAULTS.iter().position(|k| *k == fault);
    (known.unwrap_or(FAULTS.len()), fault)
}

/// The latest row (by `started_at`, then file order) of each (fault,
/// stack), in row then legend order.
fn latest_faults(rows: &[Row]) -> Vec<Row> {
    let mut best: Vec<(usize, &Row)> = Vec::new();
    for (i, r) in rows.iter().enumerate().filter(|(_, r)| !r.fault.is_empty()) {
        let newer =
            |(j, b): &(usize, &Row)| (r.started_at.as_str(), i) >= (b.started_at.as_str(), *j);
        match best
            .iter_mut()
            .find(|(_, b)| b.fault == r.fault && b.stack == r.stack)
        {
            Some(b) if newer(b) => *b = (i, r),
            Some(_) => {}
            None => best.push((i, r)),
        }
    }
    let mut out: Vec<Row> = best.into_iter().map(|(_, r)| r.clone()).collect();
    out.sort_by(|a, b| {
        fault_rank(&a.fault)
            .cmp(&fault_rank(&b.fault))
            .then(stack_rank(&a.stack).cmp(&stack_rank(&b.stack)))
    });
    out
}

/// The buckets of `path`, timed from `row`'s fault.
fn read_timeline(path: &Path, row: &Row) -> anyhow::Result<Vec<Bucket>> {
    let zero = row.warmup_s + row.fault_at_s.unwrap_or(0.0);
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for line in r.deserialize::<Line>() {
        let l = line.with_context(|| format!("{} is malformed", path.display()))?;
        out.push(Bucket {
            t: l.t_s - zero,
            delivered: l.delivered,
            max_e2e_us: l.max_e2e_us,
        });
    }
    Ok(out)
}

/// The fault runs whose timeline file exists, with their buckets.
fn runs(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Run>> {
    let mut out = Vec::new();
    for row in latest_faults(ctx.rows) {
        let file = format!("{}.timeline.csv", row.run_id);
        let path = ctx.results.hist_dir().join(file);
        if !path.exists() {
            eprintln!(
                "loadgen plot: fault-timeline: no {} (run {} left out)",
                path.display(),
                row.run_id
            );
            continue;
        }
        let buckets = read_timeline(&path, &row)?;
        if !buckets.is_empty() {
            out.push(Run { row, buckets });
        }
    }
    Ok(out)
}

/// The time axis all panels share, in seconds since the fault: ticks
/// `step` s apart from `t0` to past the last bucket. Built as an [`Axis`]
/// of categories (one per tick, category i at t0 + i·step) so that it
/// reads "-2, -1, 0, 1, …"; [`Clock::x`] maps a time onto it.
struct Clock {
    t0: f64,
    step: f64,
    ticks: usize,
}

impl Clock {
    /// From [`LEAD_S`] before the fault to `end`.
    fn new(end: f64) -> Self {
        let span = end + LEAD_S;
        let step = [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0]
            .into_iter()
            .find(|s| span / s <= 12.0)
            .unwrap_or(120.0);
        let t0 = (-LEAD_S / step).floor() * step;
        // The axis ends half a step past the last tick.
        let last = ((end - t0) / step - 0.5).ceil().max(1.0);
        Self {
            t0,
            step,
            ticks: last as usize + 1,
        }
    }

    fn x(&self, t: f64) -> f64 {
        (t - self.t0) / self.step
    }

    /// Whether the bucket starting at `t` is inside the axis.
    fn shows(&self, t: f64) -> bool {
        let x = self.x(t);
        x >= -0.5 && x <= self.ticks as f64 - 0.5
    }

    fn axis(&self) -> Axis {
        let at = |i: usize| style::trim(self.t0 + i as f64 * self.step, 1);
        Axis::categories((0..self.ticks).map(at).collect())
    }
}

/// (x, y) points of a run's buckets inside the clock, y from `f`.
fn points(run: &Run, clock: &Clock, f: impl Fn(&Bucket) -> f64) -> Vec<(f64, f64)> {
    let b = run.buckets.iter().filter(|b| clock.shows(b.t));
    b.map(|b| (clock.x(b.t), f(b))).collect()
}

/// Draws the chart: one row of panels per fault kind.
pub fn fault_timeline(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Row>> {
    let runs = runs(ctx)?;
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let last = |r: &Run| r.buckets.last().map_or(0.0, |b| b.t + bucket_s());
    let clock = Clock::new(runs.iter().map(last).fold(0.0, f64::max));
    let root = BitMapBackend::new(ctx.path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (body, foot) = root.split_vertically(SIZE.1 - 44);
    let body = body.titled(&title(&runs), (FONT, style::TITLE))?;
    let groups: Vec<&[Run]> = runs.chunk_by(|a, b| a.row.fault == b.row.fault).collect();
    let latency = latency_span(&runs, &clock);
    for (area, group) in body.split_evenly((groups.len(), 1)).iter().zip(groups) {
        fault_row(area, group, &clock, latency)?;
    }
    let (first, second) = foot.split_vertically(20);
    style::note(&first, NOTE[0])?;
    style::note(&second, NOTE[1])?;
    root.present()?;
    Ok(runs.into_iter().map(|r| r.row).collect())
}

/// The chart's title, with the load when all runs share it.
fn title(runs: &[Run]) -> String {
    let load = |r: &Run| match (r.row.offered_rate, r.row.window) {
        (Some(rate), _) => format!("{} clients, {rate:.0} msgs/s offered", r.row.clients),
        (None, Some(w)) => format!("{} clients, window {w}", r.row.clients),
        (None, None) => format!("{} clients", r.row.clients),
    };
    let first = load(&runs[0]);
    if runs.iter().all(|r| load(r) == first) {
        format!("Fault timeline: delivery and latency around each fault ({first})")
    } else {
        "Fault timeline: delivery and latency around each fault".to_owned()
    }
}

/// Smallest and largest per-bucket latency on the chart (µs), for the
/// log axis all rows share.
fn latency_span(runs: &[Run], clock: &Clock) -> (f64, f64) {
    let all = runs.iter().flat_map(|r| r.buckets.iter());
    let shown = all
        .filter(|b| b.max_e2e_us > 0 && clock.shows(b.t))
        .map(|b| f64::from(b.max_e2e_us));
    let (lo, hi) = shown.fold((f64::MAX, 0.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if hi > 0.0 { (lo, hi) } else { (1.0, 10.0) }
}

/// One fault kind: its header, delivered rate (left), latency (right).
fn fault_row(
    area: &Area<'_>,
    runs: &[Run],
    clock: &Clock,
    latency: (f64, f64),
) -> anyhow::Result<()> {
    header(area, runs)?;
    // The charts' top margin and (empty) caption sit under the header.
    let lines = runs.len().max(2) as u32;
    let (_, body) = area.split_vertically(lines * LINE_PX - 18);
    let (left, right) = body.split_horizontally(SIZE.0 * 11 / 20);
    rate_panel(&left, runs, clock)?;
    latency_panel(&right, runs, clock, latency)
}

/// The fault (left) and, one line per stack in its colour, what runs.csv
/// says it cost.
fn header(area: &Area<'_>, runs: &[Run]) -> anyhow::Result<()> {
    let row = &runs[0].row;
    let down = style::trim(row.fault_downtime_s.unwrap_or(0.0), 1);
    let big = (FONT, 22).into_font().color(&BLACK);
    area.draw_text(&row.fault, &big, (14, 4))?;
    let small = (FONT, 16).into_font().color(&RGBColor(70, 70, 70));
    area.draw_text(&format!("{down} s down"), &small, (14, 4 + LINE_PX as i32))?;
    for (i, run) in runs.iter().enumerate() {
        let font = (FONT, style::LABEL)
            .into_font()
            .color(&colour(&run.row.stack));
        let y = 6 + (i as u32 * LINE_PX) as i32;
        area.draw_text(&cost(&run.row), &font, (230, y))?;
    }
    Ok(())
}

/// "grpc: recovered in 1.2 s, peak latency 2598 ms, lost 0, dup 0".
fn cost(r: &Row) -> String {
    let recovery = match r.recovery_s {
        Some(s) => format!("recovered in {} s", style::trim(s, 1)),
        None => "not recovered within the run".to_owned(),
    };
    let peak = r.fault_max_e2e_us.map_or_else(
        || "-".to_owned(),
        |us| format!("{} ms", style::trim(us as f64 / 1e3, 0)),
    );
    format!(
        "{}: {recovery}, peak latency {peak}, lost {}, dup {}",
        r.stack, r.lost, r.duplicates
    )
}

/// Shades each run's downtime, [0, fault_downtime_s], full height.
fn shade_downtime<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    runs: &[Run],
    clock: &Clock,
) -> anyhow::Result<()> {
    let y = chart.y_range();
    let down = runs.iter().filter_map(|r| r.row.fault_downtime_s);
    let rect = |d: f64| {
        Rectangle::new(
            [(clock.x(0.0), y.start), (clock.x(d), y.end)],
            SHADE.filled(),
        )
    };
    chart.draw_series(down.map(rect))?;
    Ok(())
}

/// A dashed vertical line at `t` seconds since the fault.
fn vline<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    clock: &Clock,
    t: f64,
    st: ShapeStyle,
) -> anyhow::Result<()> {
    let (x, y) = (clock.x(t), chart.y_range());
    let path = DashedPathElement::new(vec![(x, y.start), (x, y.end)], 6, 5, st);
    chart.draw_series(std::iter::once(path))?;
    Ok(())
}

/// Where the load stops (grey, thin) and, in its colour, where each run
/// recovered (`recovery_s`).
fn mark_times<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    runs: &[Run],
    clock: &Clock,
) -> anyhow::Result<()> {
    for run in runs {
        let r = &run.row;
        let load_end = r.duration_s - r.fault_at_s.unwrap_or(0.0);
        vline(
            chart,
            clock,
            load_end,
            RGBColor(110, 110, 110).stroke_width(1),
        )?;
        if let Some(s) = r.recovery_s.filter(|s| *s > 0.0) {
            vline(chart, clock, s, colour(&r.stack).stroke_width(2))?;
        }
    }
    Ok(())
}

/// Delivered msgs/s per bucket, one line per stack, with the legend.
fn rate_panel(area: &Area<'_>, runs: &[Run], clock: &Clock) -> anyhow::Result<()> {
    let per_s = 1.0 / bucket_s();
    let lines: Vec<_> = runs
        .iter()
        .map(|r| points(r, clock, |b| f64::from(b.delivered) * per_s))
        .collect();
    let max = lines.iter().flatten().map(|p| p.1).fold(0.0, f64::max);
    let y = Axis::linear_from_zero(max, style::rate);
    let mut chart = style::chart(area, "", (clock.axis(), X_DESC), (y, "delivered msgs/s"))?;
    shade_downtime(&mut chart, runs, clock)?;
    let mut labels = Vec::new();
    for (run, pts) in runs.iter().zip(&lines) {
        labels.push(stack_label(&run.row.stack));
        stack_curve(&mut chart, &run.row.stack, pts, labels.last().cloned())?;
    }
    mark_times(&mut chart, runs, clock)?;
    labels.push("fault downtime".to_owned());
    bar_key(&mut chart, &labels[labels.len() - 1], SHADE)?;
    legend_auto(&mut chart, &labels, &lines)
}

/// The runs of consecutive buckets where something was delivered.
fn segments(pts: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let split = pts.split(|p| p.1 <= 0.0);
    split.filter(|s| !s.is_empty()).map(<[_]>::to_vec).collect()
}

/// Largest end-to-end latency per bucket (log), one line per stack.
fn latency_panel(
    area: &Area<'_>,
    runs: &[Run],
    clock: &Clock,
    (lo, hi): (f64, f64),
) -> anyhow::Result<()> {
    let y = (Axis::log(lo, hi, style::micros), "max latency (log)");
    let mut chart = style::chart(area, "", (clock.axis(), X_DESC), y)?;
    shade_downtime(&mut chart, runs, clock)?;
    mark_times(&mut chart, runs, clock)?;
    for run in runs {
        let pts = points(run, clock, |b| f64::from(b.max_e2e_us));
        for seg in segments(&pts) {
            stack_curve(&mut chart, &run.row.stack, &seg, None)?;
            if let [p] = seg[..] {
                let dot = Circle::new(p, 3, colour(&run.row.stack).filled());
                chart.draw_series(std::iter::once(dot))?;
            }
        }
    }
    Ok(())
}

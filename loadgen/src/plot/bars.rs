//! The bar charts: fan-in, durability (os vs fsync) and efficiency (each
//! chat's throughput as a share of its transport's ceiling).

use plotters::prelude::*;

use crate::output::Row;

use super::Ctx;
use super::axis::Axis;
use super::draw::{Bar, bar_key, bars, canvas, legend_auto, stack_key};
use super::select::{distinct, durability, experiment, stacks};
use super::style::{self, Area, colour, is_ceiling, stack_label};

fn clients(r: &Row) -> f64 {
    r.clients as f64
}

/// A measure drawn as one panel: title, axis title, value, unit format.
type Metric = (
    &'static str,
    &'static str,
    fn(&Row) -> f64,
    fn(f64) -> String,
);

const DELIVERED: Metric = (
    "Delivered",
    "delivered (msgs/s)",
    |r| r.delivery_rate,
    style::rate,
);
const P99: Metric = (
    "p99 latency",
    "end-to-end p99",
    |r| r.e2e_p99_us as f64,
    style::micros,
);

/// Where a row's bar goes: (group, slot, colour).
type Place<'p> = dyn Fn(&Row) -> Option<(usize, usize, RGBColor)> + 'p;

/// What a panel covers (polylines, for the legend's placement).
type Covered = Vec<Vec<(f64, f64)>>;

/// One panel of grouped bars of `metric` over `rows`.
fn panel<'a, 'b: 'a>(
    area: &'a Area<'b>,
    (groups, x_desc): (&[String], &str),
    slots: usize,
    metric: Metric,
    rows: &[Row],
    place: &Place<'_>,
) -> anyhow::Result<(style::Chart<'a, 'b>, Covered)> {
    let (name, desc, f, fmt) = metric;
    let max = rows.iter().map(f).fold(0.0, f64::max);
    let x = Axis::categories(groups.to_vec());
    let y = Axis::linear_from_zero(max * 1.3, fmt);
    let mut chart = style::chart_with(area, name, (x, x_desc), (y, desc), false)?;
    let list: Vec<Bar> = rows
        .iter()
        .filter_map(|r| {
            let (group, slot, colour) = place(r)?;
            let value = f(r);
            Some(Bar {
                group,
                slot,
                slots,
                value,
                colour,
                text: fmt(value),
            })
        })
        .collect();
    let covered = bars(&mut chart, &list)?;
    Ok((chart, covered))
}

/// A titled canvas split into two panels side by side.
fn two_panels<'b>(root: &Area<'b>, title: &str) -> anyhow::Result<(Area<'b>, Area<'b>)> {
    let body = root.titled(title, (style::FONT, style::TITLE))?;
    Ok(body.split_horizontally(style::SIZE.0 / 2))
}

fn position<T: PartialEq>(list: &[T], item: &T) -> Option<usize> {
    list.iter().position(|x| x == item)
}

/// Fan-in (all clients write to one): rate and p99 per stack per size.
pub fn fan_in(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Row>> {
    let rows = experiment(ctx.rows, "fan-in", clients);
    if rows.is_empty() {
        return Ok(rows);
    }
    let sizes = distinct(&rows, clients);
    let groups: Vec<String> = sizes.iter().map(|c| format!("{c} clients")).collect();
    let st = stacks(&rows);
    let window = rows[0].window.unwrap_or(0);
    let root = canvas(ctx.path)?;
    let title = format!("Fan-in: every client sends to one recipient (window {window})");
    let (left, right) = two_panels(&root, &title)?;
    let place = |r: &Row| {
        let group = sizes.iter().position(|c| *c == clients(r))?;
        Some((group, position(&st, &r.stack)?, colour(&r.stack)))
    };
    for (i, (area, metric)) in [(&left, DELIVERED), (&right, P99)].into_iter().enumerate() {
        let (mut chart, covered) =
            panel(area, (&groups, "clients"), st.len(), metric, &rows, &place)?;
        if i == 0 {
            for s in &st {
                stack_key(&mut chart, s)?;
            }
            let labels: Vec<String> = st.iter().map(|s| stack_label(s)).collect();
            legend_auto(&mut chart, &labels, &covered)?;
        }
    }
    root.present()?;
    Ok(rows)
}

/// Each fsync row next to the `os` row of the same stack and point (from
/// throughput-vs-clients, else payload), when there is one.
pub fn durability_pairs(rows: &[Row]) -> Vec<Row> {
    let mut out = Vec::new();
    for f in experiment(rows, "durability-fsync", clients) {
        let same = |r: &&Row| {
            r.stack == f.stack
                && durability(r) == "os"
                && (r.clients, &r.pattern, r.window, r.payload_bytes)
                    == (f.clients, &f.pattern, f.window, f.payload_bytes)
                && r.offered_rate == f.offered_rate
        };
        let os = ["throughput-vs-clients", "payload"]
            .iter()
            .find_map(|e| rows.iter().filter(|r| r.experiment == *e).find(same));
        out.extend(os.cloned());
        out.push(f);
    }
    out
}

const MODES: [(&str, &str, RGBColor); 2] = [
    (
        "os",
        "durability=os (written to the OS)",
        RGBColor(96, 125, 139),
    ),
    (
        "fsync",
        "durability=fsync (fsync per commit)",
        RGBColor(142, 36, 170),
    ),
];

/// The chats with the journal written to the OS vs fsynced.
pub fn durability_chart(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Row>> {
    let rows = durability_pairs(ctx.rows);
    if rows.is_empty() {
        return Ok(rows);
    }
    let st = stacks(&rows);
    let f = rows.last().cloned().unwrap_or_default();
    let root = canvas(ctx.path)?;
    let title = format!(
        "Durability: os vs fsync ({} clients, window {}, {} B)",
        f.clients,
        f.window.unwrap_or(0),
        f.payload_bytes
    );
    let (left, right) = two_panels(&root, &title)?;
    let place = |r: &Row| {
        let slot = MODES.iter().position(|(m, _, _)| *m == durability(r))?;
        Some((position(&st, &r.stack)?, slot, MODES[slot].2))
    };
    for (i, (area, metric)) in [(&left, DELIVERED), (&right, P99)].into_iter().enumerate() {
        let (mut chart, covered) = panel(area, (&st, "stack"), MODES.len(), metric, &rows, &place)?;
        if i == 0 {
            for (_, label, c) in MODES {
                bar_key(&mut chart, label, c)?;
            }
            let labels: Vec<String> = MODES.iter().map(|m| m.1.to_owned()).collect();
            legend_auto(&mut chart, &labels, &covered)?;
        }
    }
    root.present()?;
    Ok(rows)
}

/// Each chat's delivery rate as a share of its ceiling's, per client count.
pub fn efficiency(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Row>> {
    let mut rows = experiment(ctx.rows, "throughput-vs-clients", clients);
    rows.retain(|r| r.ceiling_ratio.is_some() && !is_ceiling(&r.stack));
    if rows.is_empty() {
        return Ok(rows);
    }
    let sizes = distinct(&rows, clients);
    let groups: Vec<String> = sizes.iter().map(|c| format!("{c} clients")).collect();
    let st = stacks(&rows);
    let root = canvas(ctx.path)?;
    let metric: Metric = (
        "Efficiency: chat throughput as % of its transport's ceiling",
        "delivered / ceiling's delivered (%)",
        |r| 100.0 * r.ceiling_ratio.unwrap_or(0.0),
        style::percent,
    );
    let place = |r: &Row| {
        let group = sizes.iter().position(|c| *c == clients(r))?;
        Some((group, position(&st, &r.stack)?, colour(&r.stack)))
    };
    let (mut chart, mut covered) = panel(
        &root,
        (&groups, "clients (throughput-vs-clients points)"),
        st.len(),
        metric,
        &rows,
        &place,
    )?;
    let n = groups.len() as f64;
    chart
        .draw_series(DashedLineSeries::new(
            vec![(-0.5, 100.0), (n - 0.5, 100.0)],
            8,
            5,
            BLACK.stroke_width(2),
        ))?
        .label("ceiling (100%)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], BLACK.stroke_width(2)));
    covered.push(vec![(-0.5, 100.0), (n - 0.5, 100.0)]);
    let mut labels = vec!["ceiling (100%)".to_owned()];
    for s in &st {
        labels.push(format!("{s} / {s}-bare"));
        bar_key(&mut chart, &labels[labels.len() - 1], colour(s))?;
    }
    legend_auto(&mut chart, &labels, &covered)?;
    root.present()?;
    Ok(rows)
}

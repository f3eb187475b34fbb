//! Drawing pieces the charts share: the canvas, a stack's line (solid for a
//! chat, dashed for a ceiling) with its legend entry, point markers, and
//! grouped bars with their values written on top.

use std::path::Path;

use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::style::{self, Area, Chart, FONT, colour, is_ceiling, stack_label};

/// A white canvas of [`style::SIZE`] that becomes the PNG at `path`.
pub fn canvas(path: &Path) -> anyhow::Result<Area<'_>> {
    let root = BitMapBackend::new(path, style::SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    Ok(root)
}

/// Splits off a strip at the bottom of `root` for a [`style::note`].
pub fn with_footer<'b>(root: &Area<'b>) -> (Area<'b>, Area<'b>) {
    root.split_vertically(style::SIZE.1 - 26)
}

fn line_style(stack: &str) -> ShapeStyle {
    colour(stack).stroke_width(if is_ceiling(stack) { 2 } else { 3 })
}

/// Draws `stack`'s line through `pts` with round markers; the legend gets
/// an entry when `label` is given.
pub fn stack_line<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    stack: &str,
    pts: &[(f64, f64)],
    label: Option<String>,
) -> anyhow::Result<()> {
    stack_curve(chart, stack, pts, label)?;
    let c = colour(stack).filled();
    chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, c)))?;
    Ok(())
}

/// Draws `stack`'s line through `pts`, no markers (dense curves).
pub fn stack_curve<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    stack: &str,
    pts: &[(f64, f64)],
    label: Option<String>,
) -> anyhow::Result<()> {
    let st = line_style(stack);
    let pts = pts.to_vec();
    let anno = if is_ceiling(stack) {
        chart.draw_series(DashedLineSeries::new(pts, 9, 5, st))?
    } else {
        chart.draw_series(LineSeries::new(pts, st))?
    };
    if let Some(label) = label {
        let stack = stack.to_owned();
        let dashed = is_ceiling(&stack);
        anno.label(label).legend(move |(x, y)| {
            let (dash, gap) = if dashed { (6, 4) } else { (22, 0) };
            DashedPathElement::new(vec![(x, y), (x + 22, y)], dash, gap, st)
        });
    }
    Ok(())
}

/// Marker shapes told apart in black and white: circle, triangle, cross.
#[derive(Clone, Copy, Debug)]
pub enum Shape {
    Circle,
    Triangle,
    Cross,
}

/// Draws one marker of `shape` per point, each with its own style.
pub fn markers<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    shape: Shape,
    pts: &[((f64, f64), ShapeStyle)],
) -> anyhow::Result<()> {
    let it = pts.iter().copied();
    match shape {
        Shape::Circle => chart.draw_series(it.map(|(p, st)| Circle::new(p, 5, st)))?,
        Shape::Triangle => chart.draw_series(it.map(|(p, st)| TriangleMarker::new(p, 7, st)))?,
        Shape::Cross => chart.draw_series(it.map(|(p, st)| Cross::new(p, 5, st)))?,
    };
    Ok(())
}

/// A legend entry for a marker shape (filled, or hollow when `hollow`).
pub fn marker_key<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    label: &str,
    shape: Shape,
    hollow: bool,
) -> anyhow::Result<()> {
    let st = if hollow {
        BLACK.stroke_width(2)
    } else {
        BLACK.filled()
    };
    let anno = chart
        .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
        .label(label);
    match shape {
        Shape::Circle => anno.legend(move |(x, y)| Circle::new((x + 10, y), 5, st)),
        Shape::Triangle => anno.legend(move |(x, y)| TriangleMarker::new((x + 10, y), 7, st)),
        Shape::Cross => anno.legend(move |(x, y)| Cross::new((x + 10, y), 5, st.stroke_width(2))),
    };
    Ok(())
}

/// One bar of a grouped bar chart: `slot` of `slots` in category `group`.
pub struct Bar {
    pub group: usize,
    pub slot: usize,
    pub slots: usize,
    pub value: f64,
    pub colour: RGBColor,
    pub text: String,
}

/// Draws the bars, each with its value written above it; returns what
/// they cover (for [`legend_auto`]): a few vertical lines per bar, up to
/// its label.
pub fn bars<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    bars: &[Bar],
) -> anyhow::Result<Vec<Vec<(f64, f64)>>> {
    let label_room = 0.08 * chart.y_range().end;
    let mut covered = Vec::new();
    for b in bars {
        let width = 0.8 / b.slots as f64;
        let x0 = b.group as f64 - 0.4 + b.slot as f64 * width;
        let (l, r) = (x0 + 0.1 * width, x0 + 0.9 * width);
        chart.draw_series(std::iter::once(Rectangle::new(
            [(l, 0.0), (r, b.value)],
            b.colour.filled(),
        )))?;
        let font = (FONT, 15)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        chart.draw_series(std::iter::once(Text::new(
            b.text.clone(),
            ((l + r) / 2.0, b.value),
            font,
        )))?;
        let top = b.value + label_room;
        covered.extend((0..=4).map(|k| {
            let x = l + (r - l) * f64::from(k) / 4.0;
            vec![(x, 0.0), (x, top)]
        }));
    }
    Ok(covered)
}

/// A legend key for a bar colour.
pub fn bar_key<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    label: &str,
    c: RGBColor,
) -> anyhow::Result<()> {
    chart
        .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
        .label(label)
        .legend(move |(x, y)| Rectangle::new([(x, y - 7), (x + 18, y + 7)], c.filled()));
    Ok(())
}

/// The legend key of a stack drawn as bars.
pub fn stack_key<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, stack: &str) -> anyhow::Result<()> {
    bar_key(chart, &stack_label(stack), colour(stack))
}

/// Where the legend goes, in the order tried: a corner first.
const SPOTS: [SeriesLabelPosition; 8] = [
    SeriesLabelPosition::UpperRight,
    SeriesLabelPosition::UpperLeft,
    SeriesLabelPosition::LowerRight,
    SeriesLabelPosition::LowerLeft,
    SeriesLabelPosition::MiddleRight,
    SeriesLabelPosition::MiddleLeft,
    SeriesLabelPosition::UpperMiddle,
    SeriesLabelPosition::LowerMiddle,
];

/// Draws the legend (entries `labels`) where it covers the fewest pixels
/// of `lines` (the data drawn, as polylines in chart coordinates).
pub fn legend_auto<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    labels: &[String],
    lines: &[Vec<(f64, f64)>],
) -> anyhow::Result<()> {
    let (xs, ys) = chart.plotting_area().get_pixel_range();
    let area = (xs.end - xs.start, ys.end - ys.start);
    let size = legend_size(labels);
    let pixels: Vec<(i32, i32)> = lines
        .iter()
        .flat_map(|l| sample(&l.iter().map(|p| chart.backend_coord(p)).collect::<Vec<_>>()))
        .map(|(x, y)| (x - xs.start, y - ys.start))
        .collect();
    let covered = |spot: &SeriesLabelPosition| {
        let (x, y) = spot_origin(spot, size, area);
        let inside = |(px, py): &(i32, i32)| {
            (x - 6..=x + size.0 + 6).contains(px) && (y - 6..=y + size.1 + 6).contains(py)
        };
        pixels.iter().filter(|p| inside(p)).count()
    };
    let best = SPOTS
        .iter()
        .min_by_key(|s| covered(s))
        .cloned()
        .unwrap_or(SeriesLabelPosition::UpperRight);
    style::legend(chart, best)
}

/// The legend box plotters will draw for `labels` (see its
/// `SeriesLabelStyle::draw`: 30 px of sample, 10 px margins, 1.25 lines).
fn legend_size(labels: &[String]) -> (i32, i32) {
    let font = (FONT, style::LABEL).into_font();
    let width = labels
        .iter()
        .filter_map(|l| font.box_size(l).ok())
        .map(|(w, _)| w as i32)
        .max()
        .unwrap_or(0);
    let line = (f64::from(style::LABEL) * 1.25).round() as i32;
    let n = labels.len().max(1) as i32;
    (width + 30 + 20, (n - 1) * line + style::LABEL as i32 + 20)
}

/// Top-left corner of a legend of `size` at `spot` (plotters' layout).
fn spot_origin(spot: &SeriesLabelPosition, size: (i32, i32), area: (i32, i32)) -> (i32, i32) {
    use SeriesLabelPosition::*;
    let x = match spot {
        UpperLeft | MiddleLeft | LowerLeft => 5,
        UpperMiddle | MiddleMiddle | LowerMiddle => (area.0 - size.0) / 2,
        _ => area.0 - size.0 - 5,
    };
    let y = match spot {
        UpperLeft | UpperMiddle | UpperRight => 5,
        MiddleLeft | MiddleMiddle | MiddleRight => (area.1 - size.1) / 2,
        _ => area.1 - size.1 - 5,
    };
    (x, y)
}

/// Pixels along a polyline, every few pixels.
fn sample(pts: &[(i32, i32)]) -> Vec<(i32, i32)> {
    let mut out: Vec<(i32, i32)> = pts.to_vec();
    for w in pts.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        let n = ((x1 - x0).abs().max((y1 - y0).abs()) / 4).max(1);
        out.extend((1..n).map(|i| (x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n)));
    }
    out
}

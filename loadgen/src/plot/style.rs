//! The look shared by every chart: the embedded font, one colour per stack
//! (ceilings lighter and dashed), text sizes that stay readable when a
//! 1000 px chart is shown ~700 px wide, and the unit formats of the axes.

use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::axis::Axis;

/// The font family every text uses (registered from the embedded file).
pub const FONT: &str = "sans-serif";
/// Chart size in pixels.
pub const SIZE: (u32, u32) = (1000, 600);
pub const TITLE: u32 = 26;
pub const LABEL: u32 = 17;
pub const DESC: u32 = 19;

/// DejaVu Sans (see loadgen/assets/README.md): the bitmap backend has no
/// system fonts without font-kit, so the PNG text comes from this copy.
static DEJAVU: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
pub type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<Axis, Axis>>;

/// Registers the embedded font once per process.
pub fn register_font_once() -> anyhow::Result<()> {
    static OK: OnceLock<bool> = OnceLock::new();
    let ok = *OK.get_or_init(|| register_font(FONT, FontStyle::Normal, DEJAVU).is_ok());
    anyhow::ensure!(ok, "the embedded DejaVu Sans font could not be loaded");
    Ok(())
}

/// The stacks in legend order: each chat next to its ceiling.
pub const STACKS: [&str; 4] = ["grpc", "grpc-bare", "amqp", "amqp-bare"];

pub fn is_ceiling(stack: &str) -> bool {
    stack.ends_with("-bare")
}

/// Blue for gRPC, orange for AMQP; the ceiling a lighter shade.
pub fn colour(stack: &str) -> RGBColor {
    match stack {
        "grpc" => RGBColor(31, 100, 180),
        "grpc-bare" => RGBColor(110, 170, 225),
        "amqp" => RGBColor(210, 85, 0),
        "amqp-bare" => RGBColor(245, 165, 80),
        _ => RGBColor(90, 90, 90),
    }
}

pub fn stack_label(stack: &str) -> String {
    if is_ceiling(stack) {
        format!("{stack} (ceiling)")
    } else {
        format!("{stack} (chat)")
    }
}

/// A chart with a title and labelled axes on `area`, grid drawn.
pub fn chart<'a, 'b: 'a>(
    area: &'a Area<'b>,
    title: &str,
    x: (Axis, &str),
    y: (Axis, &str),
) -> anyhow::Result<Chart<'a, 'b>> {
    chart_with(area, title, x, y, true)
}

/// [`chart`], with or without vertical grid lines (bars need none).
pub fn chart_with<'a, 'b: 'a>(
    area: &'a Area<'b>,
    title: &str,
    (x, x_desc): (Axis, &str),
    (y, y_desc): (Axis, &str),
    x_grid: bool,
) -> anyhow::Result<Chart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .caption(
            title,
            (
                FONT,
                if area.dim_in_pixel().0 > 700 {
                    TITLE
                } else {
                    22
                },
            ),
        )
        .margin(12)
        .x_label_area_size(55)
        .y_label_area_size(85)
        .build_cartesian_2d(x, y)?;
    let mut mesh = chart.configure_mesh();
    if !x_grid {
        mesh.disable_x_mesh();
    }
    mesh.x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(30)
        .y_labels(30)
        .label_style((FONT, LABEL))
        .axis_desc_style((FONT, DESC))
        .bold_line_style(RGBColor(205, 205, 205))
        .light_line_style(RGBColor(238, 238, 238))
        .draw()?;
    Ok(chart)
}

/// The legend, boxed, at `pos`.
pub fn legend<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    pos: SeriesLabelPosition,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(pos)
        .label_font((FONT, LABEL))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(150, 150, 150))
        .margin(10)
        .draw()?;
    Ok(())
}

/// A line of small print at the bottom left of `area` (what a reader
/// needs to read the chart right: markers, where the rows came from).
pub fn note(area: &Area<'_>, text: &str) -> anyhow::Result<()> {
    let h = area.dim_in_pixel().1 as i32;
    area.draw_text(
        text,
        &(FONT, 15).into_font().color(&RGBColor(70, 70, 70)),
        (10, h - 18),
    )?;
    Ok(())
}

/// `v` with at most `digits` decimals, trailing zeros removed.
pub fn trim(v: f64, digits: usize) -> String {
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// A rate: 500, 2k, 12.5k, 1.2M (msgs/s implied by the axis title).
pub fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6, 1))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3, 1))
    } else {
        trim(v, 1)
    }
}

/// A latency given in µs, in the unit that reads best.
pub fn micros(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 1e6 {
        format!("{} s", trim(v / 1e6, 2))
    } else if v >= 1e3 {
        format!("{} ms", trim(v / 1e3, 1))
    } else {
        format!("{} µs", trim(v, 0))
    }
}

pub fn bytes(v: f64) -> String {
    if v >= 1024.0 && v % 1024.0 == 0.0 {
        format!("{} KiB", trim(v / 1024.0, 0))
    } else {
        format!("{} B", trim(v, 0))
    }
}

pub fn count(v: f64) -> String {
    trim(v, 0)
}

pub fn percent(v: f64) -> String {
    format!("{}%", trim(v, 0))
}

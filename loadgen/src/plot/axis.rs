//! One axis type for every chart, so that each chart says exactly where
//! its ticks go and how they read ("2k", "64 KiB", "99.9%", "10 ms").
//!
//! plotters' own log axis labels every 1..9 multiple of a decade and prints
//! values with `Debug`; on a 700 px wide report those labels collide and
//! carry no units. [`Axis`] maps values linearly, logarithmically, or on the
//! HDR percentile scale (distance ∝ log 1/(1-p)), puts its labelled ticks
//! where it is told (the measured points, or 1-2-5 steps) and formats them
//! with the chart's unit.

use std::ops::Range;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};

/// How values are placed along the axis.
#[derive(Clone, Copy, Debug)]
pub enum Scale {
    Linear,
    Log,
    /// Percentiles 0..100, placed by -ln(1 - p/100): 90, 99, 99.9 are
    /// equally spaced.
    Percentile,
}

/// A value axis with chosen ticks and a label format.
pub struct Axis {
    range: Range<f64>,
    scale: Scale,
    /// Labelled ticks (bold grid lines).
    major: Vec<f64>,
    /// Unlabelled light grid lines.
    minor: Vec<f64>,
    label: Box<dyn Fn(f64) -> String>,
}

impl Axis {
    /// Log axis around `lo`..`hi` (both > 0) with labels at 1-2-5 steps
    /// (or only at powers of ten over more than three decades).
    pub fn log(lo: f64, hi: f64, label: fn(f64) -> String) -> Self {
        // A little room so that no point sits on the frame.
        let (lo, hi) = (nice_below(lo / 1.15), nice_above(hi * 1.15));
        let steps: &[f64] = if hi / lo > 2000.0 {
            &[1.0]
        } else {
            &[1.0, 2.0, 5.0]
        };
        let major = decade_multiples(lo, hi, steps);
        let minor = decade_multiples(lo, hi, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
        Self::new(lo..hi, Scale::Log, major, minor, Box::new(label))
    }

    /// Log axis labelled at the measured values themselves (clients,
    /// payload sizes, offered rates), with some room either side.
    pub fn log_at(values: &[f64], label: fn(f64) -> String) -> Self {
        let mut major: Vec<f64> = values.iter().copied().filter(|v| *v > 0.0).collect();
        major.sort_by(f64::total_cmp);
        major.dedup();
        let lo = major.first().copied().unwrap_or(1.0);
        let hi = major.last().copied().unwrap_or(10.0);
        let pad = (hi / lo).powf(0.06).max(1.3);
        Self::new(
            lo / pad..hi * pad,
            Scale::Log,
            major,
            Vec::new(),
            Box::new(label),
        )
    }

    /// Linear axis from 0 to a little above `max`, ticks at a 1-2-5 step.
    pub fn linear_from_zero(max: f64, label: fn(f64) -> String) -> Self {
        let step = nice_above((max / 5.0).max(f64::MIN_POSITIVE));
        let hi = (max / step).ceil().max(1.0) * step;
        let n = (hi / step).round() as usize;
        let major = (0..=n).map(|i| i as f64 * step).collect();
        Self::new(0.0..hi, Scale::Linear, major, Vec::new(), Box::new(label))
    }

    /// Categories 0..n at integer positions, labelled by `names`.
    pub fn categories(names: Vec<String>) -> Self {
        let n = names.len();
        let major = (0..n).map(|i| i as f64).collect();
        let label = move |v: f64| names.get(v.round() as usize).cloned().unwrap_or_default();
        Self::new(
            -0.5..n as f64 - 0.5,
            Scale::Linear,
            major,
            Vec::new(),
            Box::new(label),
        )
    }

    /// Percentile axis from 0 to `max` (< 100), labelled 50%, 90%, 99%, …
    pub fn percentile(max: f64) -> Self {
        let mut major = vec![50.0, 90.0];
        let mut nines = 10.0;
        while 100.0 - 100.0 / (nines * 10.0) <= max + 1e-9 {
            nines *= 10.0;
            major.push(100.0 - 100.0 / nines);
        }
        let label = |p: f64| format!("{}%", super::style::trim(p, 4));
        Self::new(
            0.0..max,
            Scale::Percentile,
            major,
            Vec::new(),
            Box::new(label),
        )
    }

    fn new(
        range: Range<f64>,
        scale: Scale,
        major: Vec<f64>,
        minor: Vec<f64>,
        label: Box<dyn Fn(f64) -> String>,
    ) -> Self {
        Self {
            range,
            scale,
            major,
            minor,
            label,
        }
    }

    fn transform(&self, v: f64) -> f64 {
        match self.scale {
            Scale::Linear => v,
            Scale::Log => v.max(f64::MIN_POSITIVE).ln(),
            Scale::Percentile => -(1.0 - (v / 100.0).min(1.0 - 1e-12)).ln(),
        }
    }

    fn inside(&self, v: f64) -> bool {
        let (a, b) = (self.range.start, self.range.end);
        v >= a.min(b) - 1e-9 && v <= a.max(b) + 1e-9
    }
}

impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let a = self.transform(self.range.start);
        let b = self.transform(self.range.end);
        let frac = (self.transform(*value) - a) / (b - a);
        let px = f64::from(limit.0) + frac * f64::from(limit.1 - limit.0);
        px.round().clamp(-1e6, 1e6) as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        let ticks = if hint.weight().allow_light_points() {
            &self.minor
        } else {
            &self.major
        };
        ticks.iter().copied().filter(|v| self.inside(*v)).collect()
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

impl ValueFormatter<f64> for Axis {
    fn format_ext(&self, value: &f64) -> String {
        (self.label)(*value)
    }
}

/// `steps` × 10^k for every decade, kept inside lo..=hi.
fn decade_multiples(lo: f64, hi: f64, steps: &[f64]) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi && decade.is_finite() {
        for s in steps {
            let v = s * decade;
            if v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9) {
                out.push(v);
            }
        }
        decade *= 10.0;
    }
    out
}

/// The largest 1-2-5 × 10^k not above `v`.
fn nice_below(v: f64) -> f64 {
    let decade = 10f64.powf(v.log10().floor());
    [5.0, 2.0, 1.0]
        .into_iter()
        .map(|s| s * decade)
        .find(|c| *c <= v * (1.0 + 1e-9))
        .unwrap_or(decade)
}

/// The smallest 1-2-5 × 10^k not below `v`.
fn nice_above(v: f64) -> f64 {
    let decade = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|s| s * decade)
        .find(|c| *c >= v * (1.0 - 1e-9))
        .unwrap_or(10.0 * decade)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axes_snap_to_1_2_5_and_thin_out_over_many_decades() {
        let a = Axis::log(700.0, 90_000.0, |v| v.to_string());
        assert_eq!(a.range, 500.0..200_000.0);
        assert_eq!(a.major.first(), Some(&500.0));
        assert!(a.major.contains(&2000.0));
        let wide = Axis::log(700.0, 5e6, |v| v.to_string());
        assert_eq!(wide.major, vec![1e3, 1e4, 1e5, 1e6, 1e7]);
    }

    #[test]
    fn percentiles_are_spaced_by_their_nines() {
        let a = Axis::percentile(99.99);
        assert_eq!(a.major.len(), 5, "{:?}", a.major);
        let px = |p: f64| a.map(&p, (0, 1000));
        let (d1, d2) = (px(99.0) - px(90.0), px(99.9) - px(99.0));
        assert!((d1 - d2).abs() <= 1, "{d1} vs {d2}");
        assert_eq!(a.format_ext(&99.9), "99.9%");
    }
}

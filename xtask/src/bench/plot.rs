//! Latency-percentile plots (SVG): x is the percentile on a "nines" axis, y is µs.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;

/// Percentiles plotted, with their position on the nines axis, -log10(1 - p).
pub const PERCENTILES: [f64; 5] = [50.0, 90.0, 99.0, 99.9, 99.99];

pub fn nines(p: f64) -> f64 {
    -(1.0 - p / 100.0).log10()
}

/// The percentile label for a position on the nines axis (inverse of [`nines`]).
pub fn nines_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let s = format!("{:.2}", (p * 100.0).round() / 100.0);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The x axis: linear in nines, with ticks exactly at [`PERCENTILES`].
struct NinesAxis;

const X_RANGE: std::ops::Range<f64> = 0.2..4.2;

impl Ranged for NinesAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let frac = (v - X_RANGE.start) / (X_RANGE.end - X_RANGE.start);
        limit.0 + (frac * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        PERCENTILES.iter().map(|p| nines(*p)).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        X_RANGE
    }
}

/// One line per peer: (label, [p50, p90, p99, p99.9, p99.99] in µs).
pub fn latency_svg(path: &Path, title: &str, lines: &[(String, [f64; 5])]) -> Result<()> {
    let all = || lines.iter().flat_map(|(_, v)| v.iter().copied());
    let y_max = all().fold(1.0f64, f64::max) * 1.5;
    let y_min = (all().fold(f64::INFINITY, f64::min) / 1.5).clamp(0.1, y_max / 2.0);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(NinesAxis, (y_min..y_max).log_scale())
        .map_err(|e| anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs, log scale)")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_label_formatter(&|x| nines_label(*x))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    let palette = [
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x8c, 0x56, 0x4b),
        RGBColor(0x7f, 0x7f, 0x7f),
    ];
    for (i, (label, values)) in lines.iter().enumerate() {
        let color = palette[i % palette.len()];
        let pts: Vec<(f64, f64)> = PERCENTILES
            .iter()
            .zip(values)
            .map(|(p, v)| (nines(*p), *v))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| anyhow!("{e:?}"))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.99) - 4.0).abs() < 1e-6);
        let labels: Vec<String> = PERCENTILES.iter().map(|p| nines_label(nines(*p))).collect();
        assert_eq!(labels, ["50", "90", "99", "99.9", "99.99"]);
    }

    #[test]
    fn writes_an_svg() {
        let p = std::env::temp_dir().join(format!("xtask-plot-{}.svg", std::process::id()));
        latency_svg(
            &p,
            "rate 1000 msg/s",
            &[
                ("wssedge".into(), [10.0, 20.0, 40.0, 80.0, 160.0]),
                ("peer".into(), [15.0, 30.0, 60.0, 120.0, 240.0]),
            ],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        assert!(svg.starts_with("<svg") || svg.contains("<svg"));
        assert!(svg.contains("99.99") && svg.contains("wssedge"));
    }
}

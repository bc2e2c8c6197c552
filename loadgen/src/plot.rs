//! `--plot`: the latency percentile distribution (HdrHistogram style: the x axis in "nines", so
//! the tail gets as much room as the median) beside deliveries per second over the run.

use crate::Report;
use plotters::prelude::*;

/// Percentiles drawn, as fractions: dense near the tail.
fn quantiles() -> Vec<f64> {
    let mut q = Vec::new();
    let mut nines = 0.0;
    while nines <= 5.0 {
        q.push(1.0 - 10f64.powf(-nines));
        nines += 0.05;
    }
    q
}

/// The charts' font, carried along (DejaVu Sans, see `assets/DejaVuSans-LICENSE`) so that a
/// PNG renders the same on a host with no fonts installed.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const SIZE: (u32, u32) = (1200, 480);

/// Draws to `path`: a PNG if it ends in `.png`, SVG otherwise.
pub fn draw(path: &std::path::Path, r: &Report) -> Result<(), String> {
    if r.hists.is_none() {
        return Err("no latency recorded (idle and storm scenarios have none)".into());
    }
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
        charts(BitMapBackend::new(path, SIZE).into_drawing_area(), r)
    } else {
        charts(SVGBackend::new(path, SIZE).into_drawing_area(), r)
    }
}

fn charts<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, r: &Report) -> Result<(), String> {
    let Some((lat, _)) = &r.hists else { return Err("no latency recorded".into()) };
    let err = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(640);

    let points: Vec<(f64, f64)> = quantiles()
        .into_iter()
        .filter(|q| lat.len() as f64 * (1.0 - q) >= 1.0 || *q == 0.0)
        .map(|q| (-(1.0 - q).log10(), lat.value_at_quantile(q) as f64 / 1000.0))
        .collect();
    let x_max = points.last().map_or(1.0, |p| p.0).max(1.0);
    let y_max = (lat.max() as f64 / 1000.0 * 1.05).max(0.01);
    let mut chart = ChartBuilder::on(&left)
        .caption(format!("{}: delivery latency by percentile", r.scenario), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("ms")
        .x_labels(6)
        .x_label_formatter(&|x| format!("{}%", 100.0 - 100.0 * 10f64.powf(-x)))
        .draw()
        .map_err(|e| err(&e))?;
    chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2))).map_err(|e| err(&e))?;

    let series = &r.delivered_series;
    let y2 = series.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(&right)
        .caption("deliveries per second", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..(series.len().max(1) as f64), 0f64..y2)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(series.iter().enumerate().map(|(i, v)| (i as f64 + 1.0, *v as f64)), RED.stroke_width(2)))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_reach_the_tail() {
        let q = quantiles();
        assert_eq!(q[0], 0.0);
        assert!(*q.last().unwrap() > 0.9999, "five nines");
        assert!(q.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn draws_an_svg_with_both_charts() {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..10_000u64 {
            h.record(v * 10).unwrap();
        }
        let r =
            Report { scenario: "direct".into(), hists: Some((h.clone(), h)), delivered_series: vec![100, 200, 150], ..Default::default() };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        draw(&path, &r).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("delivery latency by percentile") && svg.contains("deliveries per second"));
        assert!(svg.contains("<polyline"), "the lines are drawn");
        let png = dir.path().join("p.png");
        draw(&png, &r).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG file");
        assert!(bytes.len() > 10_000, "with something drawn in it: {} bytes", bytes.len());
        let empty = Report::default();
        assert!(draw(&path, &empty).is_err(), "no histogram: a clear error, no picture");
    }
}

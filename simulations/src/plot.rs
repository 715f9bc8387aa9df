//! The report directory's plots, drawn with `plotters`: a histogram of convergence
//! times on 1-2-5 logarithmic bins and a line plot of traffic per node, each written
//! as SVG and as PNG. plotters lays out text (both files) with a system TrueType font
//! read at run time (see [`FONT_PATHS`]; ab_glyph, no fontconfig, no C); without one
//! the report has no plots and says why.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::metrics::Percentiles;

const SIZE: (u32, u32) = (900, 500);
const FONT: &str = "sans-serif";
const PALETTE: &[RGBColor] = &[
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x17, 0xbe, 0xcf),
];
const BAR: RGBColor = RGBColor(0x4c, 0x78, 0xa8);
const GREY: RGBColor = RGBColor(0xbb, 0xbb, 0xbb);

/// Where a TrueType font for the plots' text is looked for, first found wins
/// (Debian's `fonts-dejavu-core`, then `fonts-liberation`).
pub const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// What [`write_both`] wrote, and why nothing if it wrote nothing.
#[derive(Debug, Default)]
pub struct Written {
    /// The files written.
    pub files: Vec<PathBuf>,
    /// Set when no plot could be drawn for want of a font.
    pub skipped: Option<String>,
}

/// Registers the first font of [`FONT_PATHS`] for plot text, once per process.
/// The font's bytes are kept for the life of the process (plotters wants them
/// `'static`; one file, read once).
fn font() -> Result<(), String> {
    static FONT_READY: OnceLock<Result<(), String>> = OnceLock::new();
    FONT_READY
        .get_or_init(|| {
            let (path, bytes) = FONT_PATHS
                .iter()
                .find_map(|p| std::fs::read(p).ok().map(|b| (*p, b)))
                .ok_or_else(|| {
                    format!(
                        "no TrueType font found (looked at {}; install fonts-dejavu-core)",
                        FONT_PATHS.join(", ")
                    )
                })?;
            register_font(FONT, FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
                .map_err(|_| format!("{path} is not a usable TrueType font"))
        })
        .clone()
}

/// Draws `draw` into `DIR/STEM.svg` and `DIR/STEM.png`.
pub fn write_both<F>(dir: &Path, stem: &str, draw: F) -> anyhow::Result<Written>
where
    F: Fn(&dyn PlotArea) -> anyhow::Result<()>,
{
    if let Err(why) = font() {
        return Ok(Written {
            files: Vec::new(),
            skipped: Some(why),
        });
    }
    let svg = dir.join(format!("{stem}.svg"));
    let png = dir.join(format!("{stem}.png"));
    render(SVGBackend::new(&svg, SIZE).into_drawing_area(), &svg, &draw)?;
    render(
        BitMapBackend::new(&png, SIZE).into_drawing_area(),
        &png,
        &draw,
    )?;
    Ok(Written {
        files: vec![svg, png],
        skipped: None,
    })
}

/// Draws `draw` on `root` and writes it to `path`.
fn render<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    path: &Path,
    draw: &dyn Fn(&dyn PlotArea) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    draw(&root).with_context(|| format!("cannot draw {}", path.display()))?;
    root.present()
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
}

/// A drawing area of either backend, so one drawing function serves both files.
pub trait PlotArea {
    /// Draws a histogram (see [`histogram`]).
    fn histogram(&self, title: &str, x_label: &str, samples: &[u64]) -> anyhow::Result<()>;
    /// Draws a line plot (see [`lines`]).
    fn lines(
        &self,
        title: &str,
        x_label: &str,
        y_label: &str,
        series: &[(String, Vec<(f64, f64)>)],
    ) -> anyhow::Result<()>;
}

impl<DB: DrawingBackend> PlotArea for DrawingArea<DB, Shift> {
    fn histogram(&self, title: &str, x_label: &str, samples: &[u64]) -> anyhow::Result<()> {
        histogram(self, title, x_label, samples).map_err(|e| anyhow!("{e}"))
    }
    fn lines(
        &self,
        title: &str,
        x_label: &str,
        y_label: &str,
        series: &[(String, Vec<(f64, f64)>)],
    ) -> anyhow::Result<()> {
        lines(self, title, x_label, y_label, series).map_err(|e| anyhow!("{e}"))
    }
}

/// Bin edges 0, 1, 2, 5, 10, 20, 50, ... up to the first edge above `max`.
fn log_edges(max: u64) -> Vec<u64> {
    let mut edges = vec![0, 1];
    let mut base = 1u64;
    while edges.last().is_some_and(|e| *e <= max) {
        for m in [2, 5, 10] {
            edges.push(base.saturating_mul(m));
        }
        base = base.saturating_mul(10);
    }
    edges
}

/// Counts `samples` into the bins `[edges[i], edges[i+1])`.
fn bin_counts(edges: &[u64], samples: &[u64]) -> Vec<usize> {
    let bins = edges.len() - 1;
    let mut counts = vec![0usize; bins];
    for &s in samples {
        let bin = edges.partition_point(|e| *e <= s).saturating_sub(1);
        counts[bin.min(bins - 1)] += 1;
    }
    counts
}

/// `1200` -> `1.2k`, `3000000` -> `3M`: tick labels that stay short.
fn short(value: f64) -> String {
    let (v, unit) = match value.abs() {
        a if a >= 1e6 => (value / 1e6, "M"),
        a if a >= 1e3 => (value / 1e3, "k"),
        _ => (value, ""),
    };
    let text = format!("{v:.1}");
    format!("{}{unit}", text.trim_end_matches('0').trim_end_matches('.'))
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A histogram of millisecond samples on 1-2-5 logarithmic bins (drawn at equal
/// widths), with the sample count and percentiles in the corner.
pub fn histogram<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    samples: &[u64],
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let edges = log_edges(samples.iter().copied().max().unwrap_or(0));
    let counts = bin_counts(&edges, samples);
    let bins = counts.len();
    let top = counts.iter().copied().max().unwrap_or(0).max(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0f64..bins as f64, 0f64..top)?;
    let edge_label = |x: &f64| {
        let i = x.round() as usize;
        if (x - x.round()).abs() < 1e-6 && i < edges.len() {
            short(edges[i] as f64)
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bins + 1)
        .x_label_formatter(&edge_label)
        .y_label_formatter(&|y| short(*y))
        .x_desc(x_label)
        .y_desc("writes")
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 14))
        .draw()?;
    let filled: Vec<(f64, f64)> = counts
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(i, c)| (i as f64, *c as f64))
        .collect();
    chart.draw_series(
        filled
            .iter()
            .map(|(x, n)| Rectangle::new([(x + 0.05, 0.0), (x + 0.95, *n)], BAR.filled())),
    )?;
    chart.draw_series(
        filled
            .iter()
            .map(|(x, n)| Text::new(n.to_string(), (x + 0.3, n + top * 0.04), (FONT, 11))),
    )?;
    let p = Percentiles::of(samples);
    let corner = [
        format!("samples: {}", p.count),
        format!("p50: {} ms,  p95: {} ms", p.p50, p.p95),
        format!("p99: {} ms,  max: {} ms", p.p99, p.max),
        "bars: [from, to) ms".to_string(),
    ];
    let (width, _) = root.dim_in_pixel();
    let x = width as i32 - 260;
    root.draw(&Rectangle::new(
        [(x - 8, 48), (x + 235, 48 + 18 * corner.len() as i32 + 10)],
        WHITE.filled(),
    ))?;
    root.draw(&Rectangle::new(
        [(x - 8, 48), (x + 235, 48 + 18 * corner.len() as i32 + 10)],
        BLACK.mix(0.4),
    ))?;
    for (k, line) in corner.iter().enumerate() {
        root.draw(&Text::new(
            line.as_str(),
            (x, 55 + 18 * k as i32),
            (FONT, 13),
        ))?;
    }
    Ok(())
}

/// The pointwise mean of several series (by index; shorter series drop out).
fn mean_series(series: &[(String, Vec<(f64, f64)>)]) -> Vec<(f64, f64)> {
    let longest = series.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
    (0..longest)
        .filter_map(|k| {
            let at: Vec<(f64, f64)> = series
                .iter()
                .filter_map(|(_, s)| s.get(k).copied())
                .collect();
            (!at.is_empty()).then(|| {
                let n = at.len() as f64;
                (
                    at.iter().map(|p| p.0).sum::<f64>() / n,
                    at.iter().map(|p| p.1).sum::<f64>() / n,
                )
            })
        })
        .collect()
}

/// A line plot of `(x, y)` series with a legend: up to eight named series in
/// colour; more are drawn in grey with their mean in black.
pub fn lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let points = || series.iter().flat_map(|(_, s)| s.iter());
    let x_max = points().map(|p| p.0).fold(0.0f64, f64::max).max(1.0);
    let y_max = points().map(|p| p.1).fold(0.0f64, f64::max).max(1.0) * 1.1;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|x| short(*x))
        .y_label_formatter(&|y| short(*y))
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 14))
        .draw()?;
    let many = series.len() > PALETTE.len();
    if many {
        for (_, s) in series {
            chart.draw_series(LineSeries::new(s.iter().copied(), GREY.stroke_width(1)))?;
        }
        chart
            .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())?
            .label(format!("{} runs", series.len()))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], GREY.stroke_width(3)));
        chart
            .draw_series(LineSeries::new(mean_series(series), BLACK.stroke_width(2)))?
            .label("mean over runs")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(3)));
    } else {
        for (i, (name, s)) in series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(s.iter().copied(), colour.stroke_width(2)))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(3))
                });
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font((FONT, 12))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_1_2_5_and_cover_every_sample() {
        assert_eq!(log_edges(0), vec![0, 1]);
        assert_eq!(log_edges(12), vec![0, 1, 2, 5, 10, 20, 50, 100]);
        let edges = log_edges(12_000);
        let samples = [0, 1, 3, 3, 40, 900, 12_000];
        let counts = bin_counts(&edges, &samples);
        assert_eq!(counts.iter().sum::<usize>(), samples.len());
        assert_eq!(counts[0], 1); // [0, 1)
        assert_eq!(counts[1], 1); // [1, 2)
        assert_eq!(counts[2], 2); // [2, 5)
        assert_eq!(counts[13], 1); // [10000, 20000)
    }

    #[test]
    fn short_labels() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(250.0), "250");
        assert_eq!(short(1200.0), "1.2k");
        assert_eq!(short(3_000_000.0), "3M");
    }

    #[test]
    fn both_files_are_written_and_well_formed() {
        let dir = tempfile::tempdir().unwrap();
        let samples = [0, 3, 3, 40, 900, 12_000];
        let written = write_both(dir.path(), "h", |area| {
            area.histogram("t <1>", "ms", &samples)
        })
        .unwrap();
        let svg = std::fs::read_to_string(dir.path().join("h.svg")).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("t &lt;1&gt;"),
            "{svg}"
        );
        assert!(svg.contains("p99: 12000 ms"), "{svg}");
        let series = vec![("a".to_string(), vec![(0.0, 1.0), (1.0, 5.0)])];
        write_both(dir.path(), "l", |area| area.lines("t", "s", "B", &series)).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("l.svg")).unwrap();
        assert!(svg.contains("<polyline"), "{svg}");
        // `.ci/run` installs fonts-dejavu-core: without it this fails, loudly.
        assert_eq!(written.skipped, None);
        let png = std::fs::read(dir.path().join("h.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(png.len() > 5_000, "a blank image? {} bytes", png.len());
    }
}

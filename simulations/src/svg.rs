//! Hand-written SVG plots: a histogram on logarithmic bins and a line plot, with axes,
//! ticks, labels and a title, readable in any browser or image viewer.

use std::fmt::Write as _;

use crate::metrics::Percentiles;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 500.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 80.0;
const PALETTE: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn header(out: &mut String, title: &str) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="30" font-size="17" font-weight="bold" text-anchor="middle">{}</text>
"#,
        WIDTH / 2.0,
        escape(title)
    );
}

fn axes(out: &mut String, x_label: &str, y_label: &str) {
    let (x0, y0, x1, y1) = (LEFT, HEIGHT - BOTTOM, WIDTH - RIGHT, TOP);
    let _ = write!(
        out,
        r#"<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/>
<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>
<text x="{}" y="{}" font-size="14" text-anchor="middle">{}</text>
<text x="22" y="{}" font-size="14" text-anchor="middle" transform="rotate(-90 22 {})">{}</text>
"#,
        (x0 + x1) / 2.0,
        HEIGHT - 25.0,
        escape(x_label),
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        escape(y_label)
    );
}

/// Round tick values covering `[0, max]`.
pub fn nice_ticks(max: f64) -> Vec<f64> {
    if max <= 0.0 || !max.is_finite() {
        return vec![0.0, 1.0];
    }
    let rough = max / 5.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * magnitude);
    let count = (max / step).ceil() as usize;
    (0..=count).map(|i| i as f64 * step).collect()
}

fn label(value: f64) -> String {
    if value >= 1_000_000.0 {
        format!("{:.1}M", value / 1_000_000.0)
    } else if value >= 10_000.0 {
        format!("{:.0}k", value / 1000.0)
    } else if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// Bin edges in ms: 0, then 1-2-5 steps up to cover `max`.
fn log_edges(max: u64) -> Vec<u64> {
    let mut edges = vec![0, 1];
    let mut base = 1u64;
    while *edges.last().unwrap_or(&1) <= max {
        for m in [2, 5, 10] {
            edges.push(base * m);
        }
        base *= 10;
    }
    edges
}

/// A histogram of millisecond samples on 1-2-5 logarithmic bins, with the
/// percentiles written in the corner.
pub fn histogram(title: &str, x_label: &str, samples: &[u64]) -> String {
    let mut out = String::new();
    header(&mut out, title);
    axes(&mut out, x_label, "writes");
    let max = samples.iter().copied().max().unwrap_or(0);
    let edges = log_edges(max);
    let bins = edges.len() - 1;
    let mut counts = vec![0usize; bins];
    for &s in samples {
        let bin = edges
            .windows(2)
            .position(|w| s >= w[0] && s < w[1])
            .unwrap_or(bins - 1);
        counts[bin] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(0) as f64;
    let ticks = nice_ticks(top.max(1.0));
    let y_max = ticks.last().copied().unwrap_or(1.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let bar_w = plot_w / bins as f64;
    for tick in &ticks {
        let y = HEIGHT - BOTTOM - tick / y_max * plot_h;
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/>
<text x="{}" y="{:.1}" font-size="12" text-anchor="end">{}</text>
"##,
            WIDTH - RIGHT,
            LEFT - 8.0,
            y + 4.0,
            label(*tick)
        );
    }
    for (i, count) in counts.iter().enumerate() {
        let x = LEFT + i as f64 * bar_w;
        let h = *count as f64 / y_max * plot_h;
        if *count > 0 {
            let _ = write!(
                out,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#4c78a8" stroke="white"><title>{}-{} ms: {count}</title></rect>
<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{count}</text>
"##,
                x + 1.0,
                HEIGHT - BOTTOM - h,
                bar_w - 2.0,
                edges[i],
                edges[i + 1],
                x + bar_w / 2.0,
                HEIGHT - BOTTOM - h - 4.0
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"#,
            x,
            HEIGHT - BOTTOM + 16.0,
            label(edges[i] as f64)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"#,
        LEFT + bins as f64 * bar_w,
        HEIGHT - BOTTOM + 16.0,
        label(edges[bins] as f64)
    );
    let p = Percentiles::of(samples);
    let _ = write!(
        out,
        r##"<rect x="{}" y="{}" width="230" height="92" fill="white" stroke="#999"/>
<text x="{}" y="{}" font-size="13">samples {}</text>
<text x="{}" y="{}" font-size="13">p50 {} ms   p95 {} ms</text>
<text x="{}" y="{}" font-size="13">p99 {} ms   max {} ms</text>
<text x="{}" y="{}" font-size="11" fill="#555">bars: [from, to) ms</text>
"##,
        WIDTH - RIGHT - 240.0,
        TOP + 5.0,
        WIDTH - RIGHT - 230.0,
        TOP + 25.0,
        p.count,
        WIDTH - RIGHT - 230.0,
        TOP + 45.0,
        p.p50,
        p.p95,
        WIDTH - RIGHT - 230.0,
        TOP + 65.0,
        p.p99,
        p.max,
        WIDTH - RIGHT - 230.0,
        TOP + 85.0,
    );
    out.push_str("</svg>\n");
    out
}

/// A line plot of one or more `(x, y)` series, with a legend (up to eight named
/// series; more are drawn in grey with their mean in black).
pub fn lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let mut out = String::new();
    header(&mut out, title);
    axes(&mut out, x_label, y_label);
    let x_max = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.0))
        .fold(0.0f64, f64::max);
    let y_top = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let x_ticks = nice_ticks(x_max.max(1.0));
    let y_ticks = nice_ticks(y_top.max(1.0));
    let x_end = x_ticks.last().copied().unwrap_or(1.0);
    let y_end = y_ticks.last().copied().unwrap_or(1.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let px = |x: f64| LEFT + x / x_end * plot_w;
    let py = |y: f64| HEIGHT - BOTTOM - y / y_end * plot_h;
    for tick in &y_ticks {
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#ddd"/>
<text x="{}" y="{:.1}" font-size="12" text-anchor="end">{}</text>
"##,
            py(*tick),
            WIDTH - RIGHT,
            py(*tick),
            LEFT - 8.0,
            py(*tick) + 4.0,
            label(*tick)
        );
    }
    for tick in &x_ticks {
        let _ = write!(
            out,
            r##"<line x1="{:.1}" y1="{}" x2="{:.1}" y2="{}" stroke="black"/>
<text x="{:.1}" y="{}" font-size="12" text-anchor="middle">{}</text>
"##,
            px(*tick),
            HEIGHT - BOTTOM,
            px(*tick),
            HEIGHT - BOTTOM + 5.0,
            px(*tick),
            HEIGHT - BOTTOM + 20.0,
            label(*tick)
        );
    }
    let many = series.len() > PALETTE.len();
    let polyline = |points: &[(f64, f64)], colour: &str, width: f64| {
        let coords: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        format!(
            r#"<polyline fill="none" stroke="{colour}" stroke-width="{width}" points="{}"/>
"#,
            coords.join(" ")
        )
    };
    for (i, (_, points)) in series.iter().enumerate() {
        let colour = if many {
            "#bbb"
        } else {
            PALETTE[i % PALETTE.len()]
        };
        out.push_str(&polyline(points, colour, if many { 0.8 } else { 1.5 }));
    }
    let legend: Vec<(String, &str)> = if many {
        let longest = series.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
        let mean: Vec<(f64, f64)> = (0..longest)
            .filter_map(|k| {
                let at: Vec<(f64, f64)> = series
                    .iter()
                    .filter_map(|(_, s)| s.get(k).copied())
                    .collect();
                (!at.is_empty()).then(|| {
                    (
                        at.iter().map(|p| p.0).sum::<f64>() / at.len() as f64,
                        at.iter().map(|p| p.1).sum::<f64>() / at.len() as f64,
                    )
                })
            })
            .collect();
        out.push_str(&polyline(&mean, "black", 2.0));
        vec![
            (format!("{} runs", series.len()), "#bbb"),
            ("mean over runs".to_string(), "black"),
        ]
    } else {
        series
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.clone(), PALETTE[i % PALETTE.len()]))
            .collect()
    };
    for (i, (name, colour)) in legend.iter().enumerate() {
        let y = TOP + 15.0 + i as f64 * 18.0;
        let x = WIDTH - RIGHT - 170.0;
        let _ = write!(
            out,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="3"/>
<text x="{}" y="{}" font-size="12">{}</text>
"#,
            x + 25.0,
            x + 32.0,
            y + 4.0,
            escape(name)
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_ticks(9.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(
            nice_ticks(1200.0),
            vec![0.0, 250.0, 500.0, 750.0, 1000.0, 1250.0]
        );
    }

    #[test]
    fn plots_are_well_formed() {
        let h = histogram("t <1>", "ms", &[0, 3, 3, 40, 900, 12_000]);
        assert!(h.starts_with("<svg") && h.ends_with("</svg>\n"));
        assert!(h.contains("t &lt;1&gt;"));
        let l = lines("t", "s", "B", &[("a".into(), vec![(0.0, 1.0), (1.0, 5.0)])]);
        assert!(l.contains("<polyline"));
    }
}

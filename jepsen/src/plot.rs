//! SVG plots of a run: latency over time (one dot per operation, coloured by function and
//! outcome) and throughput over time (ok operations per second per function), with the
//! nemesis's fault windows shaded. Pure functions from history to SVG text.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::history::{pair, Op, OpType, Process};

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;
const PALETTE: &[&str] = &[
    "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#bcbd22",
];

/// A fault window: from start to end, in seconds since t0, with a label.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultWindow {
    /// Start (s).
    pub start: f64,
    /// End (s).
    pub end: f64,
    /// What it was.
    pub label: String,
}

/// Fault windows from the nemesis's `start`/`stop` lines (an unmatched start lasts to the end).
pub fn fault_windows(history: &[Op]) -> Vec<FaultWindow> {
    let end = history.iter().map(|o| o.time_ns).max().unwrap_or(0) as f64 / 1e9;
    let mut out = Vec::new();
    let mut open: Option<(f64, String)> = None;
    for op in history {
        if op.process != Process::Named("nemesis".into()) {
            continue;
        }
        let t = op.time_ns as f64 / 1e9;
        match op.f.as_str() {
            "start" => {
                if let Some((s, l)) = open.take() {
                    out.push(FaultWindow {
                        start: s,
                        end: t,
                        label: l,
                    });
                }
                let label = op
                    .value
                    .as_str()
                    .map_or_else(|| op.value.to_string(), str::to_string);
                open = Some((t, label));
            }
            "stop" => {
                if let Some((s, l)) = open.take() {
                    out.push(FaultWindow {
                        start: s,
                        end: t,
                        label: l,
                    });
                }
            }
            _ => {}
        }
    }
    if let Some((s, l)) = open {
        out.push(FaultWindow {
            start: s,
            end,
            label: l,
        });
    }
    out
}

struct Frame {
    x_max: f64,
    y_max: f64,
    log_y: bool,
}

impl Frame {
    fn x(&self, t: f64) -> f64 {
        LEFT + (t / self.x_max.max(1e-9)) * (WIDTH - LEFT - RIGHT)
    }
    fn y(&self, v: f64) -> f64 {
        let frac = if self.log_y {
            (v.max(0.1).log10() + 1.0) / (self.y_max.max(0.1).log10() + 1.0)
        } else {
            v / self.y_max.max(1e-9)
        };
        HEIGHT - BOTTOM - frac.clamp(0.0, 1.0) * (HEIGHT - TOP - BOTTOM)
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn header(title: &str, frame: &Frame, y_label: &str, windows: &[FaultWindow]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="{LEFT}" y="18" font-size="14">{}</text>"#,
        escape(title)
    );
    for w in windows {
        let (x0, x1) = (frame.x(w.start), frame.x(w.end));
        let _ = write!(
            s,
            r##"<rect class="fault" x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="#d62728" fill-opacity="0.12"><title>{}</title></rect>"##,
            (x1 - x0).max(1.0),
            HEIGHT - TOP - BOTTOM,
            escape(&w.label)
        );
    }
    // Axes and ticks.
    let (x0, y0) = (LEFT, HEIGHT - BOTTOM);
    let _ = write!(
        s,
        r#"<line x1="{x0}" y1="{y0}" x2="{:.1}" y2="{y0}" stroke="black"/><line x1="{x0}" y1="{TOP}" x2="{x0}" y2="{y0}" stroke="black"/>"#,
        WIDTH - RIGHT
    );
    for i in 0..=5 {
        let t = frame.x_max * f64::from(i) / 5.0;
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t:.0}</text>"#,
            frame.x(t),
            y0 + 15.0
        );
    }
    let ticks: Vec<f64> = if frame.log_y {
        (-1..=6)
            .map(|e| 10f64.powi(e))
            .filter(|&v| v <= frame.y_max * 1.01)
            .collect()
    } else {
        (0..=4).map(|i| frame.y_max * f64::from(i) / 4.0).collect()
    };
    for v in ticks {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            x0 - 4.0,
            frame.y(v) + 4.0,
            if v < 1.0 {
                format!("{v}")
            } else {
                format!("{v:.0}")
            }
        );
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time (s)</text><text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">{}</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 6.0,
        HEIGHT / 2.0,
        HEIGHT / 2.0,
        escape(y_label)
    );
    s
}

fn legend(s: &mut String, items: &[(String, String)]) {
    for (i, (label, color)) in items.iter().enumerate() {
        let y = TOP + 14.0 * i as f64;
        let _ = write!(
            s,
            r#"<rect x="{:.1}" y="{y:.1}" width="10" height="10" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            WIDTH - RIGHT + 10.0,
            WIDTH - RIGHT + 24.0,
            y + 9.0,
            escape(label)
        );
    }
}

/// Latency of every completed client operation over time (log scale, ms).
pub fn latency_svg(history: &[Op], title: &str) -> String {
    let windows = fault_windows(history);
    let pairs = pair(history).unwrap_or_default();
    let mut fs: Vec<String> = pairs.iter().map(|p| p.invoke.f.clone()).collect();
    fs.sort();
    fs.dedup();
    let color_of = |f: &str, kind: OpType| match kind {
        OpType::Fail => "#ff7f0e".to_string(),
        OpType::Info => "#d62728".to_string(),
        _ => PALETTE[fs.iter().position(|x| x == f).unwrap_or(0) % PALETTE.len()].to_string(),
    };
    let points: Vec<(f64, f64, String)> = pairs
        .iter()
        .filter_map(|p| {
            let c = p.complete.as_ref()?;
            let lat = (c.time_ns.saturating_sub(p.invoke.time_ns)) as f64 / 1e6;
            Some((
                p.invoke.time_ns as f64 / 1e9,
                lat,
                color_of(&p.invoke.f, c.kind),
            ))
        })
        .collect();
    let x_max = history.iter().map(|o| o.time_ns).max().unwrap_or(1) as f64 / 1e9;
    let y_max = points.iter().map(|p| p.1).fold(1.0, f64::max);
    let frame = Frame {
        x_max,
        y_max,
        log_y: true,
    };
    let mut s = header(title, &frame, "latency (ms, log)", &windows);
    for (t, lat, color) in &points {
        let _ = write!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{color}" fill-opacity="0.7"/>"#,
            frame.x(*t),
            frame.y(*lat)
        );
    }
    let mut items: Vec<(String, String)> = fs
        .iter()
        .map(|f| (format!("{f} ok"), color_of(f, OpType::Ok)))
        .collect();
    items.push(("fail".into(), color_of("", OpType::Fail)));
    items.push(("info".into(), color_of("", OpType::Info)));
    items.push(("fault window".into(), "#f4c7c7".into()));
    legend(&mut s, &items);
    s.push_str("</svg>\n");
    s
}

/// Successful client operations per second, per function.
pub fn throughput_svg(history: &[Op], title: &str) -> String {
    let windows = fault_windows(history);
    let x_max = history.iter().map(|o| o.time_ns).max().unwrap_or(1) as f64 / 1e9;
    let seconds = x_max.ceil().max(1.0) as usize;
    let mut per_f: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for op in history
        .iter()
        .filter(|o| o.is_client() && o.kind == OpType::Ok)
    {
        let bin = ((op.time_ns / 1_000_000_000) as usize).min(seconds - 1);
        per_f
            .entry(op.f.clone())
            .or_insert_with(|| vec![0.0; seconds])[bin] += 1.0;
    }
    let y_max = per_f
        .values()
        .flat_map(|v| v.iter().copied())
        .fold(1.0, f64::max)
        * 1.1;
    let frame = Frame {
        x_max,
        y_max,
        log_y: false,
    };
    let mut s = header(title, &frame, "ok ops / s", &windows);
    let mut items = Vec::new();
    for (i, (f, bins)) in per_f.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<String> = bins
            .iter()
            .enumerate()
            .map(|(b, v)| format!("{:.1},{:.1}", frame.x(b as f64 + 0.5), frame.y(*v)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            pts.join(" ")
        );
        items.push((f.clone(), color.to_string()));
    }
    items.push(("fault window".into(), "#f4c7c7".into()));
    legend(&mut s, &items);
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(process: Process, kind: OpType, f: &str, t_ms: u64, value: serde_json::Value) -> Op {
        Op {
            index: 0,
            process,
            kind,
            f: f.into(),
            key: None,
            value,
            time_ns: t_ms * 1_000_000,
            error: None,
        }
    }

    fn sample() -> Vec<Op> {
        let n = || Process::Named("nemesis".into());
        let mut h = vec![op(n(), OpType::Info, "start", 1000, "kill m1".into())];
        for i in 0..50u64 {
            h.push(op(
                Process::Client(1),
                OpType::Invoke,
                "read",
                i * 40,
                serde_json::Value::Null,
            ));
            let kind = if i % 10 == 0 {
                OpType::Info
            } else {
                OpType::Ok
            };
            h.push(op(
                Process::Client(1),
                kind,
                "read",
                i * 40 + 5,
                serde_json::Value::Null,
            ));
        }
        h.push(op(n(), OpType::Info, "stop", 1500, "kill m1".into()));
        h.sort_by_key(|o| o.time_ns);
        h
    }

    #[test]
    fn windows_pair_start_and_stop() {
        let w = fault_windows(&sample());
        assert_eq!(w.len(), 1);
        assert!((w[0].start - 1.0).abs() < 1e-9 && (w[0].end - 1.5).abs() < 1e-9);
        assert_eq!(w[0].label, "kill m1");
    }

    #[test]
    fn plots_are_svg_with_shaded_faults() {
        for svg in [latency_svg(&sample(), "t"), throughput_svg(&sample(), "t")] {
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            assert_eq!(svg.matches(r#"class="fault""#).count(), 1);
        }
        assert_eq!(latency_svg(&sample(), "t").matches("<circle").count(), 50);
        assert!(throughput_svg(&sample(), "t").contains("<polyline"));
    }

    #[test]
    fn empty_history_still_plots() {
        assert!(latency_svg(&[], "empty").contains("</svg>"));
        assert!(throughput_svg(&[], "empty").contains("</svg>"));
    }
}

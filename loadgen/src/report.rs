//! The end of a run: the summary (a table, or one JSON object), and `--report DIR`:
//! `latency-e2e.hgrm` and `latency-confirm.hgrm` in HdrHistogram's percentile
//! distribution text format (what the HdrHistogram plotter reads), `summary.json`,
//! and `report.html`, a self-contained page whose charts are inline SVG drawn here.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;

use crate::stats::Counters;
use serde_json::{json, Map, Value};

/// The percentiles the summary lists (besides max).
pub const PERCENTILES: [(f64, &str); 7] = [
    (50.0, "p50"),
    (75.0, "p75"),
    (90.0, "p90"),
    (95.0, "p95"),
    (99.0, "p99"),
    (99.9, "p99_9"),
    (99.99, "p99_99"),
];

/// One second of the run.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub t_s: f64,
    pub sent_rate: f64,
    pub confirmed_rate: f64,
    pub returned_rate: f64,
    pub received_rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Loss, duplicates and order for one producer on one queue.
#[derive(Clone, Debug, Default)]
pub struct PairRow {
    pub producer: u32,
    pub queue: String,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub lost_confirmed: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

pub struct Summary {
    pub id: String,
    pub uri: String,
    pub producers: usize,
    pub consumers: usize,
    pub queues: Vec<String>,
    pub body_size: usize,
    pub rate_per_producer: f64,
    pub confirm_max: Option<u32>,
    pub producing_s: f64,
    pub consuming_s: f64,
    pub totals: Counters,
    pub unconfirmed: u64,
    pub lost: u64,
    pub lost_confirmed: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub foreign: u64,
    pub due_unsent: u64,
    pub behind_ms_max: f64,
    pub e2e: Histogram<u64>,
    pub confirm: Histogram<u64>,
    pub pairs: Vec<PairRow>,
    pub timeline: Vec<Sample>,
    pub notes: Vec<String>,
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1_000.0
}

fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

impl Summary {
    /// Whether rate-limited producers kept their schedule: fewer than 1% of the
    /// messages due (and more than one) went unsent.
    pub fn rate_kept(&self) -> Option<bool> {
        if self.rate_per_producer <= 0.0 {
            return None;
        }
        let due = self.totals.published + self.due_unsent;
        Some(self.due_unsent <= 1 || (self.due_unsent as f64) < due as f64 * 0.01)
    }

    pub fn send_rate(&self) -> f64 {
        rate(self.totals.published, self.producing_s)
    }

    pub fn receive_rate(&self) -> f64 {
        rate(self.totals.received, self.consuming_s)
    }

    pub fn confirm_rate(&self) -> f64 {
        rate(self.totals.confirmed, self.producing_s)
    }

    pub fn to_json(&self) -> Value {
        let t = &self.totals;
        json!({
            "id": self.id,
            "uri": self.uri,
            "producers": self.producers,
            "consumers": self.consumers,
            "queues": self.queues,
            "body_size": self.body_size,
            "rate_per_producer": (self.rate_per_producer > 0.0).then(|| number(self.rate_per_producer)),
            "confirm_max": self.confirm_max,
            "producing_s": number(self.producing_s),
            "consuming_s": number(self.consuming_s),
            "sent": t.published,
            "confirmed": t.confirmed,
            "nacked": t.nacked,
            "returned": t.returned,
            "unconfirmed": self.unconfirmed,
            "received": t.received,
            "redelivered": t.redelivered,
            "lost": self.lost,
            "lost_confirmed": self.lost_confirmed,
            "duplicated": self.duplicated,
            "out_of_order": self.out_of_order,
            "foreign": self.foreign,
            "send_rate": number(self.send_rate()),
            "confirm_rate": number(self.confirm_rate()),
            "receive_rate": number(self.receive_rate()),
            "rate_kept": self.rate_kept(),
            "due_unsent": self.due_unsent,
            "behind_ms_max": number(self.behind_ms_max),
            "latency_e2e_ms": histogram_json(&self.e2e),
            "latency_confirm_ms": histogram_json(&self.confirm),
            "per_producer_queue": self.pairs.iter().map(|p| json!({
                "producer": p.producer,
                "queue": p.queue,
                "sent": p.sent,
                "received": p.received,
                "lost": p.lost,
                "lost_confirmed": p.lost_confirmed,
                "duplicated": p.duplicated,
                "out_of_order": p.out_of_order,
            })).collect::<Vec<_>>(),
            "timeline": self.timeline.iter().map(|s| json!({
                "t_s": number(s.t_s),
                "sent_rate": number(s.sent_rate),
                "confirmed_rate": number(s.confirmed_rate),
                "returned_rate": number(s.returned_rate),
                "received_rate": number(s.received_rate),
                "p50_ms": s.p50_ms.map(number),
                "p99_ms": s.p99_ms.map(number),
            })).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }

    pub fn to_text(&self) -> String {
        let t = &self.totals;
        let mut s = String::new();
        let _ = writeln!(s, "loadgen summary ({}, {})", self.id, self.uri);
        let _ = writeln!(
            s,
            "  {} producers, {} consumers, {} queue(s), {} byte bodies",
            self.producers,
            self.consumers,
            self.queues.len(),
            self.body_size
        );
        let _ = writeln!(s, "  {:<12} {:>12} {:>14}", "", "messages", "mean msg/s");
        let _ = writeln!(
            s,
            "  {:<12} {:>12} {:>14.0}   over {:.2} s",
            "sent",
            t.published,
            self.send_rate(),
            self.producing_s
        );
        if self.confirm_max.is_some() {
            let _ = writeln!(
                s,
                "  {:<12} {:>12} {:>14.0}",
                "confirmed",
                t.confirmed,
                self.confirm_rate()
            );
            let _ = writeln!(s, "  {:<12} {:>12}", "nacked", t.nacked);
            let _ = writeln!(s, "  {:<12} {:>12}", "unconfirmed", self.unconfirmed);
        }
        let _ = writeln!(s, "  {:<12} {:>12}", "returned", t.returned);
        let _ = writeln!(
            s,
            "  {:<12} {:>12} {:>14.0}   over {:.2} s",
            "received",
            t.received,
            self.receive_rate(),
            self.consuming_s
        );
        let _ = writeln!(
            s,
            "  correctness: lost {} (of them confirmed by the broker: {}), duplicated {}, out of order {}, redelivered {}, foreign {}",
            self.lost, self.lost_confirmed, self.duplicated, self.out_of_order, t.redelivered, self.foreign
        );
        if let Some(kept) = self.rate_kept() {
            let _ = writeln!(
                s,
                "  rate: {:.1} msg/s per producer requested; {}; most behind schedule {:.1} ms",
                self.rate_per_producer,
                if kept {
                    "kept".to_string()
                } else {
                    format!(
                        "NOT KEPT ({} messages due were never sent)",
                        self.due_unsent
                    )
                },
                self.behind_ms_max
            );
        }
        let _ = writeln!(
            s,
            "  latency (ms)  {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
            "mean", "p50", "p75", "p90", "p95", "p99", "p99.9", "p99.99", "max", "count"
        );
        for (name, h) in [("end-to-end", &self.e2e), ("confirm", &self.confirm)] {
            if h.is_empty() {
                continue;
            }
            let _ = write!(s, "  {:<12} {:>9.3}", name, h.mean() / 1_000.0);
            for (p, _) in PERCENTILES {
                let _ = write!(s, " {:>9.3}", us_to_ms(h.value_at_percentile(p)));
            }
            let _ = writeln!(s, " {:>9.3} {:>10}", us_to_ms(h.max()), h.len());
        }
        let bad: Vec<&PairRow> = self
            .pairs
            .iter()
            .filter(|p| p.lost > 0 || p.duplicated > 0 || p.out_of_order > 0)
            .collect();
        if !bad.is_empty() {
            let _ = writeln!(
                s,
                "  per producer and queue with problems:\n  {:>8} {:<20} {:>10} {:>10} {:>8} {:>10} {:>8} {:>8}",
                "producer", "queue", "sent", "received", "lost", "lost+conf", "dup", "order"
            );
            for p in bad.iter().take(50) {
                let _ = writeln!(
                    s,
                    "  {:>8} {:<20} {:>10} {:>10} {:>8} {:>10} {:>8} {:>8}",
                    p.producer,
                    p.queue,
                    p.sent,
                    p.received,
                    p.lost,
                    p.lost_confirmed,
                    p.duplicated,
                    p.out_of_order
                );
            }
        }
        for note in &self.notes {
            let _ = writeln!(s, "  note: {note}");
        }
        s
    }
}

fn histogram_json(h: &Histogram<u64>) -> Value {
    let mut json = Map::new();
    json.insert("count".into(), h.len().into());
    if h.is_empty() {
        return Value::Object(json);
    }
    json.insert("mean".into(), number(h.mean() / 1_000.0));
    for (p, name) in PERCENTILES {
        json.insert(name.into(), number(us_to_ms(h.value_at_percentile(p))));
    }
    json.insert("max".into(), number(us_to_ms(h.max())));
    Value::Object(json)
}

/// A number for the JSON summary, to three decimals (latencies in ms to the
/// microsecond, rates to 0.001/s); null when it is not finite.
fn number(x: f64) -> Value {
    if x.is_finite() {
        Value::from((x * 1_000.0).round() / 1_000.0)
    } else {
        Value::Null
    }
}

/// HdrHistogram's percentile distribution text, values in milliseconds (recorded in
/// microseconds, so the output scaling ratio is 1000), 5 ticks per half distance:
/// the format `HistogramLogProcessor`/`outputPercentileDistribution` writes and
/// the HdrHistogram plotter reads.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = us_to_ms(v.value_iterated_to());
            if q < 1.0 {
                let _ = writeln!(
                    s,
                    "{:>12.3} {:>2.12} {:>10} {:>14.2}",
                    value,
                    q,
                    total,
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(s, "{:>12.3} {:>2.12} {:>10}", value, q, total);
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / 1_000.0, h.stdev() / 1_000.0, us_to_ms(h.max()))
    };
    let _ = writeln!(
        s,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        mean, stdev
    );
    let _ = writeln!(
        s,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        max,
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_bucket_count(h.sigfig())
    );
    s
}

/// HdrHistogram's sub-bucket count: the power of two covering 2 * 10^sigfig.
fn sub_bucket_count(sigfig: u8) -> u64 {
    (2 * 10u64.pow(u32::from(sigfig))).next_power_of_two()
}

/// Writes the report files into `dir` (created if needed).
pub fn write_report(dir: &Path, summary: &Summary) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("latency-e2e.hgrm"), hgrm(&summary.e2e))?;
    std::fs::write(dir.join("latency-confirm.hgrm"), hgrm(&summary.confirm))?;
    std::fs::write(
        dir.join("summary.json"),
        summary.to_json().to_string() + "\n",
    )?;
    std::fs::write(dir.join("report.html"), html(summary))?;
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 50.0;

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten.
fn nice_max(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if x <= m * power {
            return m * power;
        }
    }
    10.0 * power
}

/// Latency by percentile, x = log10(1 / (1 - percentile)): the "nines" plot.
fn percentile_svg(series: &[(&str, &str, &Histogram<u64>)]) -> String {
    let nines_max = series
        .iter()
        .filter(|(_, _, h)| !h.is_empty())
        .map(|(_, _, h)| (h.len() as f64).log10().ceil())
        .fold(2.0f64, f64::max)
        .min(6.0);
    let y_max = nice_max(
        series
            .iter()
            .filter(|(_, _, h)| !h.is_empty())
            .map(|(_, _, h)| us_to_ms(h.max()))
            .fold(0.0, f64::max),
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |nines: f64| LEFT + nines / nines_max * plot_w;
    let y = |ms: f64| TOP + plot_h - ms / y_max * plot_h;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"];
    for (n, label) in labels.iter().enumerate().take(nines_max as usize + 1) {
        let px = x(n as f64);
        let _ = write!(
            s,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0
        );
    }
    for i in 0..=5 {
        let ms = y_max * i as f64 / 5.0;
        let py = y(ms);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            py + 4.0,
            trim_number(ms)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text><text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">latency (ms)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 8.0,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    for (i, (name, color, h)) in series.iter().enumerate() {
        let _ = write!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="12" height="4" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 10.0,
            TOP + 10.0 + 16.0 * i as f64,
            LEFT + 26.0,
            TOP + 15.0 + 16.0 * i as f64,
            escape(name)
        );
        if h.is_empty() {
            continue;
        }
        let mut points = String::new();
        for v in h.iter_quantiles(5) {
            let q = v.quantile_iterated_to();
            let nines = if q >= 1.0 {
                nines_max
            } else {
                (1.0 / (1.0 - q)).log10().min(nines_max)
            };
            let _ = write!(
                points,
                "{:.1},{:.1} ",
                x(nines),
                y(us_to_ms(v.value_iterated_to()))
            );
        }
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.trim_end()
        );
    }
    s.push_str("</svg>");
    s
}

fn trim_number(x: f64) -> String {
    if x >= 100.0 || x == x.trunc() {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

/// Throughput per second over the run.
fn throughput_svg(timeline: &[Sample]) -> String {
    type Pick = fn(&Sample) -> f64;
    let series: [(&str, &str, Pick); 3] = [
        ("sent", "#1f77b4", |s| s.sent_rate),
        ("confirmed", "#ff7f0e", |s| s.confirmed_rate),
        ("received", "#2ca02c", |s| s.received_rate),
    ];
    let t_max = timeline.last().map_or(1.0, |s| s.t_s).max(1.0);
    let y_max = nice_max(
        timeline
            .iter()
            .flat_map(|s| series.iter().map(move |(_, _, f)| f(s)))
            .fold(0.0, f64::max),
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |t: f64| LEFT + t / t_max * plot_w;
    let y = |r: f64| TOP + plot_h - r / y_max * plot_h;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    for i in 0..=5 {
        let r = y_max * i as f64 / 5.0;
        let t = t_max * i as f64 / 5.0;
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y(r) + 4.0,
            trim_number(r),
            x(t),
            TOP + plot_h + 18.0,
            trim_number(t),
            py = y(r)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds</text><text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">msg/s</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 8.0,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    for (i, (name, color, pick)) in series.iter().enumerate() {
        let _ = write!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="12" height="4" fill="{color}"/><text x="{:.1}" y="{:.1}">{name}</text>"#,
            LEFT + 10.0,
            TOP + 10.0 + 16.0 * i as f64,
            LEFT + 26.0,
            TOP + 15.0 + 16.0 * i as f64,
        );
        let points: Vec<String> = timeline
            .iter()
            .map(|smp| format!("{:.1},{:.1}", x(smp.t_s), y(pick(smp))))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
    }
    s.push_str("</svg>");
    s
}

fn html(summary: &Summary) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>loadgen: {}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:900px}}pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}</style>\
         </head><body>\n<h1>loadgen: {}</h1>\n",
        escape(&summary.id),
        escape(&summary.id)
    );
    let _ = writeln!(
        s,
        "<h2>Summary</h2>\n<pre>{}</pre>",
        escape(&summary.to_text())
    );
    let _ = writeln!(
        s,
        "<h2>Latency by percentile</h2>\n{}",
        percentile_svg(&[
            ("end-to-end", "#1f77b4", &summary.e2e),
            ("confirm", "#ff7f0e", &summary.confirm),
        ])
    );
    let _ = writeln!(
        s,
        "<h2>Throughput over time</h2>\n{}",
        throughput_svg(&summary.timeline)
    );
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    #[test]
    fn hgrm_has_the_standard_header_and_ends_at_percentile_one() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let text = hgrm(&h);
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
            ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        );
        let data: Vec<&str> = text
            .lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .collect();
        assert!(data.len() > 20);
        let last: Vec<&str> = data.last().unwrap().split_whitespace().collect();
        assert_eq!(last.len(), 3);
        assert_eq!(last[1].parse::<f64>().unwrap(), 1.0);
        assert_eq!(last[2], "10000");
        assert!(text.contains("#[Max     =       10.0"), "{text}");
    }

    #[test]
    fn nice_axis_bounds() {
        assert_eq!(nice_max(0.7), 1.0);
        assert_eq!(nice_max(1.3), 2.0);
        assert_eq!(nice_max(420.0), 500.0);
        assert_eq!(nice_max(0.0), 1.0);
    }
}

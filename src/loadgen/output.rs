//! Printing reports: a table for people, JSON for scripts, and an SVG plot
//! of a sweep.

use super::{Report, Scenario};
use plotters::prelude::*;
use std::io::{self, Write};
use std::path::Path;

/// Writes reports as a human table: one report as `field value` lines, more
/// (a sweep) as one row per report.
pub fn write_table(out: &mut impl Write, reports: &[Report]) -> io::Result<()> {
    match reports {
        [] => Ok(()),
        [report] => write_fields(out, report),
        _ => write_rows(out, reports),
    }
}

/// Writes one report as a JSON object, or several as an array, and a
/// newline. Field names are documented on [`Report`].
pub fn write_json(out: &mut impl Write, reports: &[Report]) -> io::Result<()> {
    match reports {
        [report] => serde_json::to_writer_pretty(&mut *out, report),
        _ => serde_json::to_writer_pretty(&mut *out, reports),
    }
    .map_err(io::Error::other)?;
    writeln!(out)
}

fn write_fields(out: &mut impl Write, r: &Report) -> io::Result<()> {
    let scenario = match r.scenario {
        Scenario::Rr => "rr (request/reply)",
        Scenario::Idle => "idle connections",
        Scenario::Fanout => "fanout (chat)",
    };
    let mut rows: Vec<(&str, String)> = vec![("scenario", scenario.into())];
    if r.interrupted {
        rows.push(("interrupted", "by Ctrl-C: the figures so far".into()));
    }
    rows.extend([
        ("server", r.addr.clone()),
        ("connections", format!("{} opened of {}", r.opened, r.conns)),
    ]);
    if let (Some(total), Some(p99)) = (r.connect_total_ms, r.connect_p99_us) {
        rows.push((
            "connect time",
            format!("{total:.1} ms for all, p99 {p99:.0} µs each"),
        ));
    }
    if let Some(rate) = r.connect_rate {
        rows.push(("connect rate", format!("{rate:.0} connections/s")));
    }
    if let Some(p) = r.pipeline {
        rows.push(("pipeline", p.to_string()));
    }
    if let (Some(s), Some(rate)) = (r.senders, r.rate) {
        rows.push(("senders", format!("{s} at {rate} lines/s each")));
    }
    rows.push(("elapsed", format!("{:.2} s", r.elapsed_s)));
    let unit = match r.scenario {
        Scenario::Fanout => "deliveries/s",
        _ => "req/s",
    };
    let count = |label, value: Option<u64>, rows: &mut Vec<(&str, String)>| {
        if let Some(v) = value {
            rows.push((label, v.to_string()));
        }
    };
    count("sent", r.sent, &mut rows);
    count("completed", r.completed, &mut rows);
    count("answered", r.answered, &mut rows);
    count("expected", r.expected, &mut rows);
    count("delivered", r.delivered, &mut rows);
    count("order violations", r.order_violations, &mut rows);
    if let Some(t) = r.throughput {
        rows.push(("throughput", format!("{t:.0} {unit}")));
    }
    let latency = [
        ("latency p50", r.p50_us),
        ("latency p99", r.p99_us),
        ("latency p99.9", r.p999_us),
        ("latency max", r.max_us),
    ];
    for (label, us) in latency {
        if let Some(us) = us {
            rows.push((label, format!("{us:.1} µs")));
        }
    }
    rows.push(("errors", errors(r)));
    if let Some(e) = &r.first_error {
        rows.push(("first error", e.clone()));
    }
    if let Some(cpu) = r.server_cpu_us_per_op {
        let per = match r.scenario {
            Scenario::Rr => "reply",
            Scenario::Idle => "connection",
            Scenario::Fanout => "delivery",
        };
        rows.push(("server CPU", format!("{cpu:.2} µs per {per}")));
    }
    if let Some(each) = &r.server_cpu_us_each {
        let each: Vec<String> = each.iter().map(|us| format!("{us} µs")).collect();
        let each = each.join(", ");
        rows.push(("server CPU each", format!("{each} (in --server-pid order)")));
    }
    if let Some(base) = r.server_rss_base_kib {
        rows.push(("server RSS before", format!("{base} KiB")));
    }
    if let Some(kib) = r.server_rss_per_conn_kib {
        let when = match r.scenario {
            Scenario::Idle => "held idle",
            _ => "under load",
        };
        rows.push(("server RSS/conn", format!("{kib:.2} KiB {when}")));
    }
    if let Some(kib) = r.server_rss_per_conn_answered_kib {
        rows.push(("server RSS/conn", format!("{kib:.2} KiB after answering")));
    }
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    for (label, value) in rows {
        writeln!(out, "{label:<width$}  {value}")?;
    }
    Ok(())
}

/// `110465 reply is not the echo of the request, 3 connection reset`, or
/// `0`.
fn errors(r: &Report) -> String {
    let kinds: Vec<String> = r
        .error_counts
        .iter()
        .map(|e| format!("{} {}", e.count, e.error))
        .collect();
    match kinds.is_empty() {
        true => r.errors.to_string(),
        false => kinds.join(", "),
    }
}

fn write_rows(out: &mut impl Write, reports: &[Report]) -> io::Result<()> {
    let header = [
        "conns",
        "completed",
        "req/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "errors",
        "cpu µs/req",
        "rss KiB/conn",
    ];
    let rows: Vec<[String; 10]> = reports
        .iter()
        .map(|r| {
            [
                r.conns.to_string(),
                num(r.completed.map(|c| c as f64), 0),
                num(r.throughput, 0),
                num(r.p50_us, 1),
                num(r.p99_us, 1),
                num(r.p999_us, 1),
                num(r.max_us, 1),
                r.errors.to_string(),
                num(r.server_cpu_us_per_op, 2),
                num(r.server_rss_per_conn_kib, 2),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        cells
            .zip(widths)
            .map(|(cell, w)| format!("{cell:>w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    writeln!(out, "{}", line(&mut header.iter().copied()))?;
    for row in &rows {
        writeln!(out, "{}", line(&mut row.iter().map(String::as_str)))?;
    }
    Ok(())
}

fn num(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

/// Draws throughput and p99 latency against the connection count of each
/// report (a sweep) as an SVG file: two panels, log-scale x axis.
pub fn plot(reports: &[Report], path: &Path) -> io::Result<()> {
    let fail = |e: &dyn std::fmt::Display| {
        io::Error::other(format!("cannot draw {}: {e}", path.display()))
    };
    let points = |value: fn(&Report) -> Option<f64>| -> Vec<(f64, f64)> {
        reports
            .iter()
            .filter_map(|r| Some((r.conns as f64, value(r)?)))
            .collect()
    };
    let throughput = points(|r| r.throughput);
    let p99 = points(|r| r.p99_us);

    let root = SVGBackend::new(path, (800, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let panels = root.split_evenly((2, 1));
    let panels = [
        (&panels[0], "Throughput", "requests / s", &throughput, BLUE),
        (&panels[1], "p99 latency", "p99 latency (µs)", &p99, RED),
    ];
    for (area, title, y_label, data, color) in panels {
        draw_panel(area, title, y_label, data, color).map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw_panel(
    area: &Area<'_>,
    title: &str,
    y_label: &str,
    data: &[(f64, f64)],
    color: RGBColor,
) -> Result<(), DrawingAreaErrorKind<io::Error>> {
    let (x_min, x_max) = data.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &(x, _)| {
        (lo.min(x), hi.max(x))
    });
    let (x_min, x_max) = if data.is_empty() {
        (1.0, 10.0)
    } else {
        (x_min.max(1.0) / 1.5, x_max.max(1.0) * 1.5)
    };
    let y_max = data.iter().map(|&(_, y)| y).fold(0.0, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };

    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("connections (log scale)")
        .y_desc(y_label)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    chart.draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2)))?;
    chart.draw_series(
        data.iter()
            .map(|&point| Circle::new(point, 4, color.filled())),
    )?;
    Ok(())
}

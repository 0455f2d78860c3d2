//! `ebb-peers chart [TARGET_DIR]`: draw `benches/peers/performance.svg` from the results the
//! runner saved for `memory` (`<TARGET_DIR>/ebb-peers/memory.json`), for `read-heavy`
//! (`read-heavy.json` beside it: each implementation's median over alternating rounds, which
//! one criterion run cannot be trusted for on a machine that changes speed), and from
//! criterion's `write_heavy` results (`<TARGET_DIR>/criterion/`; criterion's `read_heavy` when
//! there is no `read-heavy.json`).

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

use crate::names::{
    DASHMAP, DASHMAP_NO_TTL, EBB, EBB_STATS, EXACT_LIMIT, MINI_MOKA, MOKA_FUTURE, MOKA_SYNC,
    QUICK_CACHE, QUICK_CACHE_NO_TTL,
};
use crate::report::read_row;
use crate::workloads::results_dir;

const EBB_COLOR: RGBColor = RGBColor(0x1f, 0x6f, 0xb4);
const SHADES: [RGBColor; 3] = [
    RGBColor(0x1f, 0x6f, 0xb4),
    RGBColor(0xe0, 0x7b, 0x22),
    RGBColor(0x5a, 0xa0, 0x4a),
];

/// One chart: horizontal bars, one row per implementation, one bar per series.
struct Bars {
    title: String,
    unit: &'static str,
    rows: Vec<String>,
    /// (series label, one value per row; NaN where there is none).
    series: Vec<(String, Vec<f64>)>,
}

pub fn chart(target: &Path) -> Result<String, String> {
    let memory = memory_bars()?;
    let throughput = throughput_bars(&target.join("criterion"))?;
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("performance.svg");
    {
        let root = SVGBackend::new(&out, (1200, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (left, right) = root.split_horizontally(600);
        draw(&left, &memory).map_err(|e| e.to_string())?;
        draw(&right, &throughput).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(format!("wrote {}\n", out.display()))
}

fn memory_bars() -> Result<Bars, String> {
    let path = results_dir().join("memory.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (run `cargo run --release -p ebb-peers -- memory` first)",
            path.display()
        )
    })?;
    let rows: Vec<Value> = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = Vec::new();
    let mut ns: Vec<u64> = Vec::new();
    for r in &rows {
        let name = r["impl"].as_str().unwrap_or("?").to_string();
        if !names.contains(&name) {
            names.push(name);
        }
        let n = r["n"].as_u64().unwrap_or(0);
        if !ns.contains(&n) {
            ns.push(n);
        }
    }
    let series = ns
        .iter()
        .map(|&n| {
            let values = names
                .iter()
                .map(|name| {
                    rows.iter()
                        .find(|r| r["impl"] == name.as_str() && r["n"].as_u64() == Some(n))
                        .and_then(|r| r["heap_per_entry"].as_f64())
                        .unwrap_or(f64::NAN)
                })
                .collect();
            (format!("N = {n}"), values)
        })
        .collect();
    let rows = names
        .into_iter()
        .map(|n| match n.as_str() {
            DASHMAP | QUICK_CACHE => format!("{n} (no TTL)"),
            _ => n,
        })
        .collect();
    Ok(Bars {
        title: "memory: heap bytes per u64 -> u64 entry (TTL 300 s)".to_string(),
        unit: "B",
        rows,
        series,
    })
}

fn throughput_bars(criterion: &Path) -> Result<Bars, String> {
    const IMPLS: [&str; 8] = [
        EBB,
        EXACT_LIMIT,
        DASHMAP_NO_TTL,
        MOKA_FUTURE,
        MOKA_SYNC,
        MINI_MOKA,
        QUICK_CACHE_NO_TTL,
        EBB_STATS,
    ];
    let mut series = Vec::new();
    for group in ["read_heavy", "write_heavy"] {
        if group == "read_heavy" {
            if let Some(values) = alternating_read_heavy(&IMPLS)? {
                series.push(("read_heavy (alternating)".to_string(), values));
                continue;
            }
        }
        let mut values = Vec::new();
        for name in IMPLS {
            let row = read_row(&criterion.join(group).join(name))?;
            values.push(row.map_or(f64::NAN, |r| 1e3 / r.ns_per_op));
        }
        series.push((group.to_string(), values));
    }
    if series.iter().all(|(_, v)| v.iter().all(|x| x.is_nan())) {
        return Err(format!(
            "no read_heavy / write_heavy results under {} (run the core bench first)",
            criterion.display()
        ));
    }
    Ok(Bars {
        title: "throughput, 2 threads, Zipf keys (M ops/s)".to_string(),
        unit: "M",
        rows: IMPLS.iter().map(|s| s.to_string()).collect(),
        series,
    })
}

/// M ops/s of each of `names` from the last `ebb-peers read-heavy` run, if there is one.
fn alternating_read_heavy(names: &[&str]) -> Result<Option<Vec<f64>>, String> {
    let path = results_dir().join("read-heavy.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let rows: Vec<Value> =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let value = |name: &str| {
        rows.iter()
            .find(|r| r["impl"] == name)
            .and_then(|r| r["ns_per_op"].as_f64())
            .map_or(f64::NAN, |ns| 1e3 / ns)
    };
    Ok(Some(names.iter().map(|n| value(n)).collect()))
}

fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    bars: &Bars,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let n = bars.rows.len();
    let max = bars
        .series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(&bars.title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(150)
        .build_cartesian_2d(0.0..max * 1.2, -0.5..n as f64 - 0.5)?;
    let rows = bars.rows.clone();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&move |y| {
            let i = y.round();
            if (y - i).abs() < 0.01 && i >= 0.0 {
                // Row 0 at the top.
                rows.get(n - 1 - i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .draw()?;
    let k = bars.series.len() as f64;
    let height = 0.8 / k;
    for (s, (label, values)) in bars.series.iter().enumerate() {
        let color = SHADES[s % SHADES.len()];
        let offset = 0.4 - height * (s as f64 + 0.5);
        let rects = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(move |(i, &v)| {
                let y = (n - 1 - i) as f64 + offset;
                let fill = if i == 0 && k == 1.0 { EBB_COLOR } else { color };
                Rectangle::new(
                    [(0.0, y - height / 2.0), (v, y + height / 2.0)],
                    fill.filled(),
                )
            });
        chart
            .draw_series(rects)?
            .label(label.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        let unit = bars.unit;
        let texts = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(move |(i, &v)| {
                let y = (n - 1 - i) as f64 + offset;
                let digits = usize::from(unit == "M");
                Text::new(
                    format!(" {v:.digits$}{unit}"),
                    (v, y + height / 3.0),
                    ("sans-serif", 11),
                )
            });
        chart.draw_series(texts)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

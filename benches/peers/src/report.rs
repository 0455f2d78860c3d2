//! `ebb-peers report [TARGET_DIR]`: turn criterion's results for the `core` and `load` benches
//! into Markdown ratio tables.
//!
//! Reads `TARGET_DIR/criterion/<group>/<implementation>/new/estimates.json` (the mean point
//! estimate, in ns per iteration) and `benchmark.json` (the throughput per iteration).
//! TARGET_DIR defaults to `$CARGO_TARGET_DIR`, then `target`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::names::{
    DASHMAP_NO_TTL, EBB, EBB_BOUNDED, EBB_GET, EBB_GET_WITH, EBB_STATS, EBB_TTI, EXACT_LIMIT,
    MINI_MOKA, MOKA_FUTURE, MOKA_GET, MOKA_GET_WITH, MOKA_SYNC, QUICK_CACHE_NO_TTL,
};

/// Groups of the `core` bench, then of the `load` bench, in the order they run.
const GROUPS: [&str; 8] = [
    "get_hit",
    "insert_overwrite",
    "build_insert_get_drop",
    "read_heavy",
    "write_heavy",
    "get_with_hit",
    "miss_storm",
    "miss_heavy",
];

/// Implementations, in the order they are listed; others found on disk follow.
const IMPLS: [&str; 14] = [
    EBB,
    EBB_STATS,
    EBB_TTI,
    EBB_BOUNDED,
    EBB_GET_WITH,
    EBB_GET,
    EXACT_LIMIT,
    DASHMAP_NO_TTL,
    MOKA_FUTURE,
    MOKA_SYNC,
    MOKA_GET_WITH,
    MOKA_GET,
    MINI_MOKA,
    QUICK_CACHE_NO_TTL,
];

/// The row every other row of a group is divided by: `ebb_get` in `get_with_hit` (so that
/// the `ebb_get_with` row reads as the get_with-hit overhead), else `ebb`.
fn baseline(group: &str) -> &'static str {
    match group {
        "get_with_hit" => EBB_GET,
        _ => EBB,
    }
}

/// One implementation's result in one group.
pub struct Row {
    /// Mean time per element, in nanoseconds.
    pub ns_per_op: f64,
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The result in `dir` (`<group>/<implementation>`), if criterion left one there.
pub fn read_row(dir: &Path) -> Result<Option<Row>, String> {
    let estimates = dir.join("new").join("estimates.json");
    if !estimates.is_file() {
        return Ok(None);
    }
    let mean = read_json(&estimates)?
        .pointer("/mean/point_estimate")
        .and_then(Value::as_f64)
        .ok_or_else(|| format!("{}: no mean.point_estimate", estimates.display()))?;
    // Elements (or bytes) per iteration; 1 when the bench declared no throughput.
    let per_iter = read_json(&dir.join("new").join("benchmark.json"))
        .ok()
        .and_then(|b| {
            let t = b.get("throughput")?;
            t.get("Elements")
                .or_else(|| t.get("Bytes"))
                .and_then(Value::as_f64)
        })
        .filter(|n| *n > 0.0)
        .unwrap_or(1.0);
    Ok(Some(Row {
        ns_per_op: mean / per_iter,
    }))
}

fn sub_dirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != "report")
        .collect();
    names.sort();
    names
}

pub fn report(root: &Path) -> Result<String, String> {
    if !root.is_dir() {
        return Err(format!(
            "{} not found: run `cargo bench -p ebb-peers --bench core` (or `--bench load`) first",
            root.display()
        ));
    }
    let mut groups: Vec<String> = GROUPS.iter().map(|g| g.to_string()).collect();
    groups.extend(
        sub_dirs(root)
            .into_iter()
            .filter(|g| !GROUPS.contains(&g.as_str())),
    );

    let mut out = String::new();
    for group in &groups {
        let dir = root.join(group);
        if !dir.is_dir() {
            continue;
        }
        let mut names: Vec<String> = IMPLS.iter().map(|i| i.to_string()).collect();
        names.extend(
            sub_dirs(&dir)
                .into_iter()
                .filter(|i| !IMPLS.contains(&i.as_str())),
        );
        let mut rows = BTreeMap::new();
        let mut order = Vec::new();
        for name in names {
            if let Some(row) = read_row(&dir.join(&name))? {
                order.push(name.clone());
                rows.insert(name, row);
            }
        }
        if rows.is_empty() {
            continue;
        }
        out.push_str(&table(group, &order, &rows));
    }
    if out.is_empty() {
        return Err(format!("no criterion results under {}", root.display()));
    }
    out.push_str(
        "Ratios are within this one run. \"time ÷ ebb\" > 1 means that implementation is slower \
         than ebb; < 1 means faster (in `get_with_hit` the base is `ebb_get`). `_no_ttl` peers \
         do no expiry at all.\n",
    );
    Ok(out)
}

fn table(group: &str, order: &[String], rows: &BTreeMap<String, Row>) -> String {
    let base_name = baseline(group);
    let base = rows.get(base_name).map(|r| r.ns_per_op);
    let mut s = format!("### {group}\n\n");
    s.push_str(&format!(
        "| implementation | mean ns/op | ops/s | time ÷ {base_name} |\n"
    ));
    s.push_str("|---|---:|---:|---:|\n");
    for name in order {
        let r = &rows[name];
        let ratio = base.map_or_else(|| "n/a".to_string(), |e| ratio(r.ns_per_op / e));
        s.push_str(&format!(
            "| {name} | {:.1} | {} | {ratio} |\n",
            r.ns_per_op,
            rate(1e9 / r.ns_per_op),
        ));
    }
    s.push('\n');
    let notes = notes(group, rows);
    if !notes.is_empty() {
        s.push_str(&format!("{}\n\n", notes.join("; ")));
    }
    s
}

/// The ratio lines printed under a group's table, with the targets they are held to.
fn notes(group: &str, rows: &BTreeMap<String, Row>) -> Vec<String> {
    let ns = |name: &str| rows.get(name).map(|r| r.ns_per_op);
    // Time of `slow` over time of `fast`: how many times longer `slow` takes.
    let times = |slow: &str, fast: &str| Some(ns(slow)? / ns(fast)?);
    let verdict = |met: bool| if met { "met" } else { "missed" };
    let mut notes = Vec::new();
    match group {
        "read_heavy" | "write_heavy" => {
            // Throughput ratio: `fast`'s ops/s over `slow`'s ops/s, i.e. time(slow)/time(fast).
            for (peer, label, target) in [
                (EXACT_LIMIT, "exact-limit", Some(0.90)),
                (MOKA_FUTURE, "moka future", Some(4.0)),
                (MOKA_SYNC, "moka sync", None),
                (MINI_MOKA, "mini-moka", None),
            ] {
                if let Some(x) = times(peer, EBB) {
                    match target.filter(|_| group == "read_heavy") {
                        Some(t) => notes.push(format!(
                            "ebb/{label} throughput = {x:.2} (target ≥ {t:.2}: {})",
                            verdict(x >= t)
                        )),
                        None => notes.push(format!("ebb/{label} throughput = {x:.2}")),
                    }
                }
            }
            for (variant, target) in [(EBB_STATS, 0.95), (EBB_TTI, 0.90), (EBB_BOUNDED, 0.85)] {
                if let Some(x) = times(EBB, variant) {
                    notes.push(format!(
                        "{variant}/ebb throughput = {x:.2} (target ≥ {target:.2}: {})",
                        verdict(x >= target)
                    ));
                }
            }
        }
        "get_with_hit" => {
            if let Some(x) = times(EBB_GET_WITH, EBB_GET) {
                notes.push(format!(
                    "ebb get_with hit ÷ ebb get time = {x:.2} (target ≤ 1.10: {})",
                    verdict(x <= 1.10)
                ));
            }
            if let Some(x) = times(MOKA_GET_WITH, MOKA_GET) {
                notes.push(format!("moka get_with hit ÷ moka get time = {x:.2}"));
            }
            if let Some(x) = times(MOKA_GET_WITH, EBB_GET_WITH) {
                notes.push(format!("moka ÷ ebb get_with hit time = {x:.2}"));
            }
            if let Some(x) = times(MOKA_GET, EBB_GET) {
                notes.push(format!("moka ÷ ebb get time = {x:.2}"));
            }
        }
        "miss_storm" => {
            notes.push("one op is one storm of 1,000 callers".to_string());
            if let Some(x) = times(MOKA_FUTURE, EBB) {
                notes.push(format!(
                    "moka ÷ ebb storm time = {x:.2} (target ≥ 1.00, ebb at least as fast: {})",
                    verdict(x >= 1.0)
                ));
            }
        }
        "miss_heavy" => {
            if let Some(x) = times(MOKA_FUTURE, EBB) {
                notes.push(format!(
                    "ebb/moka throughput = {x:.2} (target ≥ 1.00, ebb at least as fast: {})",
                    verdict(x >= 1.0)
                ));
            }
        }
        _ => {}
    }
    notes
}

/// A ratio with two decimals, or three significant digits when it is small.
fn ratio(x: f64) -> String {
    if x >= 0.1 {
        format!("{x:.2}")
    } else {
        format!("{x:.2e}")
    }
}

/// Operations per second, as `21.6M` or `31.6k`.
fn rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2}M", per_sec / 1e6)
    } else if per_sec >= 1e3 {
        format!("{:.1}k", per_sec / 1e3)
    } else {
        format!("{per_sec:.0}")
    }
}

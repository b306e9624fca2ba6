//! `<scenario>-summary.json`: req/s and latency percentiles per request
//! name, from Goose's own metrics (microsecond buckets), over the measured
//! window (after the launch, when Goose resets its metrics).

use goose::{metrics::GooseMetrics, test_plan::TestPlanStepAction as Step};
use serde_json::{Map, Value, json};

/// Seconds Goose measured: from the metrics reset (the first steady step)
/// to the end of the steady state; the whole run when nothing was reset.
fn measured_seconds(m: &GooseMetrics, whole_run: bool) -> f64 {
    let h = &m.history;
    let start = if whole_run {
        h.first()
    } else {
        h.iter()
            .find(|s| matches!(s.action, Step::Maintaining))
            .or(h.first())
    };
    let Some(start) = start else {
        return m.duration as f64;
    };
    let end = h
        .iter()
        .filter(|s| s.timestamp > start.timestamp)
        .find(|s| {
            matches!(
                s.action,
                Step::Decreasing | Step::Canceling | Step::Finished
            )
        })
        .or(h.last());
    match end {
        Some(end) if end.timestamp > start.timestamp => {
            (end.timestamp - start.timestamp).num_milliseconds() as f64 / 1000.0
        }
        _ => m.duration as f64,
    }
}

fn ms(us: u64) -> f64 {
    (us as f64 / 10.0).round() / 100.0
}

pub fn build(scenario: &str, host: &str, m: &GooseMetrics, extra: Map<String, Value>) -> Value {
    let whole_run = scenario == "flash-sale";
    let secs = measured_seconds(m, whole_run).max(0.001);
    let mut rows: Vec<Value> = Vec::new();
    let (mut total, mut total_fail) = (0usize, 0usize);
    let mut names: Vec<_> = m.requests.iter().collect();
    names.sort_by(|a, b| a.0.cmp(b.0));
    for (_, r) in names {
        let count = r.success_count + r.fail_count;
        total += count;
        total_fail += r.fail_count;
        let t = &r.raw_data;
        let mut status: Vec<(u16, usize)> =
            r.status_code_counts.iter().map(|(k, v)| (*k, *v)).collect();
        status.sort_unstable();
        rows.push(json!({
            "name": r.path,
            "method": r.method.to_string(),
            "count": count,
            "ok": r.success_count,
            "fail": r.fail_count,
            "rps": (count as f64 / secs * 10.0).round() / 10.0,
            "mean_ms": if t.counter > 0 { ms(t.total_time_us / t.counter as u64) } else { 0.0 },
            "p50_ms": ms(t.percentile_us(0.50)),
            "p90_ms": ms(t.percentile_us(0.90)),
            "p99_ms": ms(t.percentile_us(0.99)),
            "max_ms": ms(t.maximum_time_us),
            "status": status.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<Map<_, _>>(),
        }));
    }
    json!({
        "scenario": scenario,
        "host": host,
        "users": m.maximum_users,
        "seconds": secs,
        "requests": rows,
        "total": {
            "count": total,
            "fail": total_fail,
            "rps": (total as f64 / secs * 10.0).round() / 10.0,
        },
        "extra": extra,
    })
}

pub fn print(s: &Value) {
    println!(
        "\n== {} : {} users, {:.1} s measured ==",
        s["scenario"].as_str().unwrap_or("?"),
        s["users"],
        s["seconds"].as_f64().unwrap_or(0.0)
    );
    println!(
        "{:<22} {:>9} {:>7} {:>10} {:>8} {:>8} {:>8}",
        "request", "count", "fail", "req/s", "p50 ms", "p90 ms", "p99 ms"
    );
    for r in s["requests"].as_array().into_iter().flatten() {
        println!(
            "{:<22} {:>9} {:>7} {:>10.1} {:>8.2} {:>8.2} {:>8.2}",
            format!(
                "{} {}",
                r["method"].as_str().unwrap_or(""),
                r["name"].as_str().unwrap_or("")
            ),
            r["count"],
            r["fail"],
            r["rps"].as_f64().unwrap_or(0.0),
            r["p50_ms"].as_f64().unwrap_or(0.0),
            r["p90_ms"].as_f64().unwrap_or(0.0),
            r["p99_ms"].as_f64().unwrap_or(0.0),
        );
    }
    if let Some(extra) = s["extra"].as_object() {
        for (k, v) in extra {
            if !v.is_object() && !v.is_array() {
                println!("  {k}: {v}");
            }
        }
    }
}

//! Per-repetition measurements and the peer's one-line JSON report.
//!
//! The schema is `orc_bench`'s (see the peer README, "Output"): `wall_s` is
//! the median of the timed phase over the reps, `ops_per_sec = ops / wall_s`,
//! `cpu_s` the median process CPU time of the timed phase, every other
//! `*_s` key the median of a secondary phase, other numeric keys medians of
//! per-rep values; then `rss_before_kb`, `peak_rss_kb`, `loadavg_1m_*`, and
//! `kiln_version` where the peer has `llvm_version`.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::measure::{loadavg_1m, median, peak_rss_kb};

/// A JSON scalar.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// An integer.
    Int(i64),
    /// A floating-point number (non-finite values are written as `null`).
    Num(f64),
    /// A string.
    Str(String),
}

impl From<Json> for Value {
    fn from(v: Json) -> Value {
        match v {
            Json::Int(i) => Value::from(i),
            Json::Num(x) => num(x),
            Json::Str(s) => Value::String(s),
        }
    }
}

/// `x` as JSON: integral values as integers (`1`, not `1.0`, as the peer
/// and the earlier writer print them), non-finite ones as `null`.
fn num(x: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if x.fract() == 0.0 && x.abs() < EXACT {
        Value::from(x as i64)
    } else {
        // `Value::from` turns a non-finite number into `null`.
        Value::from(x)
    }
}

impl From<usize> for Json {
    fn from(v: usize) -> Self {
        Json::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<u64> for Json {
    fn from(v: u64) -> Self {
        Json::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<i64> for Json {
    fn from(v: i64) -> Self {
        Json::Int(v)
    }
}

impl From<f64> for Json {
    fn from(v: f64) -> Self {
        Json::Num(v)
    }
}

impl From<&str> for Json {
    fn from(v: &str) -> Self {
        Json::Str(v.to_owned())
    }
}

impl From<String> for Json {
    fn from(v: String) -> Self {
        Json::Str(v)
    }
}

/// One repetition's measurements.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rep {
    /// Wall time of the timed ("main") phase.
    pub main: Duration,
    /// Process CPU seconds during the main phase.
    pub main_cpu_s: f64,
    /// Secondary phases, reported as `<name>_s` medians; the same names in
    /// the same order in every rep.
    pub phases: Vec<(&'static str, Duration)>,
    /// Informational per-rep values, reported as medians under their name.
    pub info: Vec<(&'static str, f64)>,
}

/// A workload's result over all reps.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Human-readable name, e.g. "W1 lookup-ready".
    pub name: &'static str,
    /// Short workload key, e.g. "w1".
    pub workload: &'static str,
    /// The `params` object, in order.
    pub params: Vec<(&'static str, Json)>,
    /// Operations per rep in the main phase.
    pub ops: f64,
    /// What one operation is.
    pub ops_unit: &'static str,
    /// The reps.
    pub reps: Vec<Rep>,
    /// Extra keys written after the medians (e.g. `edges`, `edge_hash`).
    pub extra: Vec<(&'static str, Json)>,
}

/// Process-level context recorded by the program around the workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessContext {
    /// Peak RSS in KiB at program start.
    pub rss_before_kb: i64,
    /// 1-minute load average at program start.
    pub loadavg_1m_start: f64,
}

impl ProcessContext {
    /// Captures the context now (call first thing in `main`).
    pub fn capture() -> Self {
        ProcessContext {
            rss_before_kb: peak_rss_kb(),
            loadavg_1m_start: loadavg_1m(),
        }
    }
}

impl Report {
    /// Median wall time of the main phase, in seconds.
    pub fn median_wall_s(&self) -> f64 {
        median(&self.mains())
    }

    fn mains(&self) -> Vec<f64> {
        self.reps.iter().map(|r| r.main.as_secs_f64()).collect()
    }

    /// Renders the one-line JSON object. Peak RSS and the end load average
    /// are read at the time of the call.
    pub fn to_json(&self, ctx: ProcessContext) -> String {
        let mains = self.mains();
        let wall = median(&mains);
        let cpu = median(&self.reps.iter().map(|r| r.main_cpu_s).collect::<Vec<_>>());
        let min = mains.iter().copied().fold(f64::INFINITY, f64::min);
        let max = mains.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut fields: Vec<(String, Json)> = vec![
            ("reps".into(), self.reps.len().into()),
            ("ops".into(), Json::Num(self.ops)),
            ("ops_unit".into(), self.ops_unit.into()),
            ("wall_s".into(), Json::Num(wall)),
            (
                "ops_per_sec".into(),
                Json::Num(if wall > 0.0 { self.ops / wall } else { 0.0 }),
            ),
            ("wall_s_min".into(), Json::Num(min)),
            ("wall_s_max".into(), Json::Num(max)),
            ("cpu_s".into(), Json::Num(cpu)),
        ];
        if let Some(first) = self.reps.first() {
            for (p, (name, _)) in first.phases.iter().enumerate() {
                let v: Vec<f64> = self
                    .reps
                    .iter()
                    .map(|r| r.phases.get(p).map_or(f64::NAN, |(_, d)| d.as_secs_f64()))
                    .collect();
                fields.push((format!("{name}_s"), Json::Num(median(&v))));
            }
            for (p, (name, _)) in first.info.iter().enumerate() {
                let v: Vec<f64> = self
                    .reps
                    .iter()
                    .map(|r| r.info.get(p).map_or(f64::NAN, |(_, x)| *x))
                    .collect();
                fields.push(((*name).into(), Json::Num(median(&v))));
            }
        }
        fields.extend(self.extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        fields.push(("rss_before_kb".into(), Json::Int(ctx.rss_before_kb)));
        fields.push(("peak_rss_kb".into(), Json::Int(peak_rss_kb())));
        fields.push(("loadavg_1m_start".into(), Json::Num(ctx.loadavg_1m_start)));
        fields.push(("loadavg_1m_end".into(), Json::Num(loadavg_1m())));
        fields.push(("kiln_version".into(), env!("CARGO_PKG_VERSION").into()));

        // Keys in the peer's order (serde_json's `preserve_order`);
        // `wall_s_samples` goes right after `cpu_s`, as in the peer.
        let mut object = Map::new();
        object.insert("name".into(), self.name.into());
        object.insert("workload".into(), self.workload.into());
        let params: Map<String, Value> = self
            .params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone().into()))
            .collect();
        object.insert("params".into(), Value::Object(params));
        for (k, v) in fields {
            let samples = k == "cpu_s";
            object.insert(k, v.into());
            if samples {
                let samples = mains.iter().map(|&s| num(s)).collect();
                object.insert("wall_s_samples".into(), Value::Array(samples));
            }
        }
        Value::Object(object).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(main_ms: u64, define_ms: u64, first: f64) -> Rep {
        Rep {
            main: Duration::from_millis(main_ms),
            main_cpu_s: main_ms as f64 / 1000.0,
            phases: vec![("define", Duration::from_millis(define_ms))],
            info: vec![("first_materialized_index", first)],
        }
    }

    #[test]
    fn json_line_has_the_peer_schema_and_medians() {
        let r = Report {
            name: "W3 materialize-chain",
            workload: "w3",
            params: vec![("n", 10_000usize.into()), ("dispatcher", "inplace".into())],
            ops: 10_000.0,
            ops_unit: "symbols materialized",
            reps: vec![rep(30, 5, 0.0), rep(10, 1, 0.0), rep(20, 3, 2.0)],
            extra: vec![
                ("edges", 9_999usize.into()),
                ("edge_hash", "0c86eb8fa6bef228".into()),
            ],
        };
        let ctx = ProcessContext {
            rss_before_kb: 1234,
            loadavg_1m_start: 0.5,
        };
        let line = r.to_json(ctx);
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).expect("valid JSON");
        let keys: Vec<&str> = v
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "name",
                "workload",
                "params",
                "reps",
                "ops",
                "ops_unit",
                "wall_s",
                "ops_per_sec",
                "wall_s_min",
                "wall_s_max",
                "cpu_s",
                "wall_s_samples",
                "define_s",
                "first_materialized_index",
                "edges",
                "edge_hash",
                "rss_before_kb",
                "peak_rss_kb",
                "loadavg_1m_start",
                "loadavg_1m_end",
                "kiln_version"
            ]
        );
        assert_eq!(v["name"], "W3 materialize-chain");
        assert_eq!(v["workload"], "w3");
        let params: Vec<(&String, &Value)> =
            v["params"].as_object().expect("params").iter().collect();
        assert_eq!(params.len(), 2);
        assert_eq!(
            (params[0].0.as_str(), params[0].1),
            ("n", &Value::from(10_000))
        );
        assert_eq!(
            (params[1].0.as_str(), params[1].1),
            ("dispatcher", &Value::from("inplace"))
        );
        assert_eq!(v["reps"], 3);
        assert!(
            line.contains("\"ops\":10000,"),
            "integral numbers as integers: {line}"
        );
        assert_eq!(v["wall_s"], 0.02);
        assert_eq!(v["ops_per_sec"], 500_000);
        assert_eq!(
            (&v["wall_s_min"], &v["wall_s_max"]),
            (&Value::from(0.01), &Value::from(0.03))
        );
        assert_eq!(v["cpu_s"], 0.02);
        assert_eq!(v["wall_s_samples"], serde_json::json!([0.03, 0.01, 0.02]));
        assert_eq!(v["define_s"], 0.003);
        assert_eq!(v["first_materialized_index"], 0);
        assert_eq!(v["edges"], 9999);
        assert_eq!(v["edge_hash"], "0c86eb8fa6bef228");
        assert_eq!(v["rss_before_kb"], 1234);
        assert_eq!(v["loadavg_1m_start"], 0.5);
        assert_eq!(v["kiln_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(r.median_wall_s(), 0.02);
    }

    #[test]
    fn strings_are_escaped_and_non_finite_is_null() {
        let v: Value = Json::Str("a\"b\\c\nd".into()).into();
        assert_eq!(v.to_string(), r#""a\"b\\c\nd""#);
        assert_eq!(Value::from(Json::Num(f64::NAN)).to_string(), "null");
        let tiny = Value::from(Json::Num(1e-7)).to_string();
        assert_eq!(tiny.parse::<f64>().ok(), Some(1e-7));
    }
}

//! Test guest: a metrics source that reports the families in its `families`
//! setting, a JSON array of `{"name", "type", "values": ["1", "inf", "NaN"]}`
//! (values as text, so non-finite ones can be written). Each value becomes a
//! sample labelled `i="<index>"`. With `sleep_ms`, it first sleeps that long
//! (a source that hangs).

use capstan_sdk::metrics_source::{MetricFamily, MetricType, MetricsSource, Sample};
use capstan_sdk::{Error, config};
use serde_json::Value;

struct Emit;

fn family(f: &Value) -> Result<MetricFamily, Error> {
    let kind = match f["type"].as_str().unwrap_or("gauge") {
        "counter" => MetricType::Counter,
        "gauge" => MetricType::Gauge,
        _ => MetricType::Untyped,
    };
    let samples = f["values"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let text = v.as_str().unwrap_or_default();
            let value = text
                .parse::<f64>()
                .map_err(|e| Error::InvalidInput(format!("value `{text}`: {e}")))?;
            Ok(Sample {
                labels: vec![("i".into(), i.to_string())],
                value,
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok(MetricFamily {
        name: f["name"].as_str().unwrap_or_default().into(),
        help: format!("test family {}", f["name"]),
        kind,
        samples,
    })
}

impl MetricsSource for Emit {
    fn collect() -> Result<Vec<MetricFamily>, Error> {
        let sleep: u64 = config::get_or("sleep_ms", "0").parse().unwrap_or(0);
        if sleep > 0 {
            std::thread::sleep(std::time::Duration::from_millis(sleep));
        }
        let families: Value = capstan_sdk::parse_json(&config::get_or("families", "[]"))?;
        families
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(family)
            .collect()
    }
}

capstan_sdk::export_metrics_source!(Emit);

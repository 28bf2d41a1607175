//! Metrics source that reports on the URLs in its `targets` setting.

use capstan_sdk::metrics_source::{MetricFamily, MetricType, MetricsSource, Sample};
use capstan_sdk::{Error, config};

struct HttpProbe;

impl MetricsSource for HttpProbe {
    fn collect() -> Result<Vec<MetricFamily>, Error> {
        let targets = config::get_or("targets", "");
        let targets: Vec<&str> = targets
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        Ok(vec![MetricFamily {
            name: "targets".into(),
            help: "Number of configured probe targets".into(),
            kind: MetricType::Gauge,
            samples: vec![Sample {
                labels: vec![],
                value: targets.len() as f64,
            }],
        }])
    }
}

capstan_sdk::export_metrics_source!(HttpProbe);

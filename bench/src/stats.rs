//! Medians, percentiles and the ratio table.

use std::time::Duration;

pub struct Row {
    pub name: String,
    pub samples: Vec<Duration>,
}

impl Row {
    pub fn new(name: &str, mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self {
            name: name.to_string(),
            samples,
        }
    }

    pub fn percentile(&self, p: f64) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((self.samples.len() - 1) as f64 * p).round() as usize;
        self.samples[idx]
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn print_table(rows: &[Row]) {
    let median_of = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .map(|r| r.percentile(0.5))
    };
    let fork = median_of("fork");
    let bwrap = median_of("bwrap");
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>12} {:>10}",
        "system", "p50 ms", "p95 ms", "p99 ms", "vs fork+exec", "vs bwrap"
    );
    for r in rows {
        let p50 = r.percentile(0.5);
        let ratio = |base: Option<Duration>| match base {
            Some(b) if !b.is_zero() && !r.name.starts_with(' ') => {
                format!("{:.2}x", p50.as_secs_f64() / b.as_secs_f64())
            }
            _ => "-".into(),
        };
        println!(
            "{:<30} {:>10.2} {:>10.2} {:>10.2} {:>12} {:>10}",
            r.name,
            ms(p50),
            ms(r.percentile(0.95)),
            ms(r.percentile(0.99)),
            ratio(fork),
            ratio(bwrap)
        );
    }
}

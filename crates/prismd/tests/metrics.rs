//! `/metrics` end to end: the real prismd; the page parses with a Prometheus text parser and
//! its counters move with the requests made.
#![allow(clippy::unwrap_used)]

mod support;

use prism_types::{CreateSandboxRequest, ExecRequest};
use support::Daemon;

async fn scrape(url: &str) -> prometheus_parse::Scrape {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| {
            (x.metric == name || Some(x.metric.as_str()) == name.strip_suffix("_total"))
                && labels
                    .iter()
                    .all(|(k, v)| x.labels.get(k).is_some_and(|l| l == *v))
        })
        .and_then(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(*v),
            prometheus_parse::Value::Histogram(b) => b.last().map(|b| b.count),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_counters_move() {
    if !support::root_or_skip("metrics_parse_and_counters_move") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let c = &d.client;
    let sb = c.create(&CreateSandboxRequest::default()).await.unwrap();
    let exec = ExecRequest {
        command: Some("true".into()),
        ..Default::default()
    };
    c.exec(&sb.id, &exec).await.unwrap();

    let first = scrape(&d.url()).await;
    let exec_route = [
        ("route", "/v1/sandboxes/:id/exec"),
        ("method", "POST"),
        ("status", "200"),
    ];
    let execs = value(&first, "prism_http_requests_total", &exec_route)
        .unwrap_or_else(|| panic!("no exec counter in {:?}", first.samples));
    assert!(execs >= 1.0, "{execs}");
    let creates = value(
        &first,
        "prism_http_requests_total",
        &[
            ("route", "/v1/sandboxes"),
            ("method", "POST"),
            ("status", "201"),
        ],
    );
    assert_eq!(creates, Some(1.0));
    assert_eq!(
        value(&first, "prism_sandboxes", &[("state", "running")]),
        Some(1.0)
    );
    let names: Vec<_> = first.samples.iter().map(|s| s.metric.clone()).collect();
    let mem = value(&first, "prism_sandbox_memory_bytes", &[("sandbox", &sb.id)])
        .unwrap_or_else(|| panic!("no memory gauge among {names:?}"));
    assert!(mem > 0.0, "{mem}");
    let create_hist = value(&first, "prism_sandbox_create_duration_seconds_count", &[])
        .or_else(|| value(&first, "prism_sandbox_create_duration_seconds", &[]));
    assert_eq!(create_hist, Some(1.0));

    // Two more execs and a 404: the counters move by exactly that.
    c.exec(&sb.id, &exec).await.unwrap();
    c.exec(&sb.id, &exec).await.unwrap();
    assert!(c.get("no-such-sandbox").await.is_err());
    let second = scrape(&d.url()).await;
    assert_eq!(
        value(&second, "prism_http_requests_total", &exec_route),
        Some(execs + 2.0)
    );
    assert_eq!(
        value(
            &second,
            "prism_http_requests_total",
            &[
                ("route", "/v1/sandboxes/:id"),
                ("method", "GET"),
                ("status", "404")
            ]
        ),
        Some(1.0)
    );
    // Storage I/O: 8 MiB written to the writable layer by a process that has exited since
    // (its counters live on in the agent that reaped it) shows in the API and in the gauge.
    let before = c.metrics(&sb.id).await.unwrap().io_write_bytes;
    let write = ExecRequest {
        command: Some("dd if=/dev/zero of=/root/blob bs=1M count=8 conv=fsync 2>/dev/null".into()),
        ..Default::default()
    };
    assert_eq!(c.exec(&sb.id, &write).await.unwrap().exit_code, 0);
    let after = c.metrics(&sb.id).await.unwrap().io_write_bytes;
    assert!(
        after >= before + (8 << 20),
        "io_write_bytes {before} -> {after}"
    );
    let io = value(
        &scrape(&d.url()).await,
        "prism_sandbox_io_write_bytes",
        &[("sandbox", &sb.id)],
    );
    assert!(io.is_some_and(|v| v >= (8 << 20) as f64), "{io:?}");

    c.destroy(&sb.id).await.unwrap();
    let third = scrape(&d.url()).await;
    assert_eq!(
        value(&third, "prism_sandboxes", &[("state", "running")]),
        Some(0.0)
    );
}

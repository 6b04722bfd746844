//! Prometheus `/metrics`: HTTP requests by route template and status with a latency histogram,
//! create and exec latency histograms, sandboxes by state, and per-sandbox CPU and memory.
//! Counters and histograms are recorded by [`track`], a route layer over the API; gauges are
//! read from the manager when scraped.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use prism_store::ListFilter;
use prism_types::SandboxState;

use crate::AppState;
use crate::error::AppError;

/// Most sandboxes whose CPU and memory are read per scrape.
const MAX_SANDBOX_GAUGES: usize = 1000;

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process-wide recorder (installed on first use; one per process, like the registry).
fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Gauges of gone sandboxes disappear once no scrape has refreshed them for a minute.
        let builder = PrometheusBuilder::new().idle_timeout(
            metrics_util::MetricKindMask::GAUGE,
            Some(std::time::Duration::from_secs(60)),
        );
        let builder = builder
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(message = "a metrics recorder was already installed");
        }
        handle
    })
}

/// Make sure the recorder exists before the first request is counted.
pub fn init() {
    handle();
}

/// Route layer: count and time every request by its route template.
pub async fn track(matched: Option<MatchedPath>, req: Request, next: Next) -> Response {
    // `:id` rather than `{id}`: braces inside label values trip some exposition parsers.
    let route = matched
        .map(|m| m.as_str().replace('{', ":").replace('}', ""))
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let secs = start.elapsed().as_secs_f64();
    let status = resp.status().as_u16().to_string();
    metrics::counter!("prism_http_requests_total", "route" => route.clone(),
        "method" => method.clone(), "status" => status)
    .increment(1);
    metrics::histogram!("prism_http_request_duration_seconds", "route" => route.clone(),
        "method" => method.clone())
    .record(secs);
    if resp.status().is_success() && method == "POST" {
        if route == "/v1/sandboxes" {
            metrics::histogram!("prism_sandbox_create_duration_seconds").record(secs);
        } else if route.ends_with("/exec") {
            metrics::histogram!("prism_exec_duration_seconds").record(secs);
        }
    }
    resp
}

/// Refresh the gauges read from the manager.
async fn gauges(st: &AppState) -> Result<(), AppError> {
    let counts = st.manager.counts().await?;
    for state in ["creating", "running", "stopped", "failed"] {
        let n = SandboxState::parse(state)
            .and_then(|s| counts.get(&s).copied())
            .unwrap_or(0);
        metrics::gauge!("prism_sandboxes", "state" => state).set(n as f64);
    }
    for p in st.manager.pools() {
        let t = p.template.clone();
        metrics::gauge!("prism_pool_size", "template" => t.clone()).set(p.size as f64);
        metrics::gauge!("prism_pool_ready", "template" => t.clone()).set(p.ready as f64);
        metrics::gauge!("prism_pool_starting", "template" => t.clone()).set(p.starting as f64);
        metrics::gauge!("prism_pool_claimed", "template" => t.clone()).set(p.claimed as f64);
        metrics::gauge!("prism_pool_misses", "template" => t.clone()).set(p.misses as f64);
        metrics::gauge!("prism_pool_memory_pressure", "template" => t).set(if p.memory_pressure {
            1.0
        } else {
            0.0
        });
    }
    let (running, _) = st
        .manager
        .list(ListFilter {
            state: Some(SandboxState::Running),
            limit: MAX_SANDBOX_GAUGES,
            ..Default::default()
        })
        .await?;
    for sb in running {
        if let Ok(m) = st.manager.metrics(&sb.id).await {
            let id = sb.id.clone();
            metrics::gauge!("prism_sandbox_cpu_seconds", "sandbox" => id.clone())
                .set(m.cpu_usage_ns as f64 / 1e9);
            metrics::gauge!("prism_sandbox_memory_bytes", "sandbox" => id.clone())
                .set(m.memory_bytes as f64);
            metrics::gauge!("prism_sandbox_pids", "sandbox" => id.clone()).set(m.pids as f64);
            metrics::gauge!("prism_sandbox_disk_bytes", "sandbox" => id.clone())
                .set(m.disk_bytes as f64);
            metrics::gauge!("prism_sandbox_io_read_bytes", "sandbox" => id.clone())
                .set(m.io_read_bytes as f64);
            metrics::gauge!("prism_sandbox_io_write_bytes", "sandbox" => id.clone())
                .set(m.io_write_bytes as f64);
            if let Some(n) = m.network {
                for (name, v) in [
                    ("prism_sandbox_network_rx_bytes", n.rx_bytes),
                    ("prism_sandbox_network_rx_packets", n.rx_packets),
                    ("prism_sandbox_network_tx_bytes", n.tx_bytes),
                    ("prism_sandbox_network_tx_packets", n.tx_packets),
                    ("prism_sandbox_dns_dropped", n.dns_dropped),
                    ("prism_sandbox_proxy_refused", n.proxy_refused),
                ] {
                    metrics::gauge!(name, "sandbox" => id.clone()).set(v as f64);
                }
            }
        }
    }
    Ok(())
}

/// `GET /metrics` (admin key when auth is on).
#[utoipa::path(get, path = "/metrics", tag = "daemon",
    responses((status = 200, description = "Prometheus text exposition format",
               content_type = "text/plain", body = String)))]
pub async fn scrape(State(st): State<AppState>) -> Result<Response, AppError> {
    gauges(&st).await?;
    let h = handle();
    h.run_upkeep();
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        h.render(),
    )
        .into_response())
}

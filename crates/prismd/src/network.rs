//! The daemon's [`SandboxNetwork`]: prism-net's host networking (veth pairs, nftables, the DNS
//! forwarder) for the lifecycle manager, and the `PATCH /v1/sandboxes/{id}/network` handler.

use std::net::Ipv4Addr;

use axum::Json;
use axum::extract::{Path, State};
use futures_util::future::BoxFuture;
use prism_core::lifecycle::{NetCounters, NetLeftovers, NetworkError, SandboxNetwork};
use prism_net::Network;
use prism_types::network::NetworkMode;
use prism_types::{ApiError, Sandbox, SetNetworkRequest};

use crate::AppState;
use crate::error::{AppError, chain};
use crate::extract::ApiJson;

/// prism-net behind the lifecycle's trait.
pub struct HostNetwork(pub Network);

fn err(e: prism_net::NetError) -> NetworkError {
    NetworkError(chain(&e))
}

impl SandboxNetwork for HostNetwork {
    fn attach<'a>(
        &'a self,
        id: &'a str,
        pid: u32,
        mode: &'a NetworkMode,
    ) -> BoxFuture<'a, Result<Option<Ipv4Addr>, NetworkError>> {
        Box::pin(async move {
            let a = self.0.attach(id, pid, mode).await.map_err(err)?;
            Ok(a.map(|a| a.nameserver))
        })
    }

    fn detach<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), NetworkError>> {
        Box::pin(async move { self.0.detach(id).await.map_err(err) })
    }

    fn remove_link<'a>(&'a self, ifname: &'a str) -> BoxFuture<'a, Result<(), NetworkError>> {
        Box::pin(async move { self.0.remove_link(ifname).await.map_err(err) })
    }

    fn ifname(&self, id: &str) -> String {
        prism_net::host_ifname(id)
    }

    fn leftovers(&self) -> BoxFuture<'_, Result<NetLeftovers, NetworkError>> {
        Box::pin(async move {
            let (ids, links) = self.0.leftovers().await.map_err(err)?;
            Ok(NetLeftovers { ids, links })
        })
    }

    fn counters(&self, id: &str) -> Option<NetCounters> {
        self.0.stats(id).map(|s| NetCounters {
            rx_bytes: s.link.rx_bytes,
            rx_packets: s.link.rx_packets,
            tx_bytes: s.link.tx_bytes,
            tx_packets: s.link.tx_packets,
            dns_dropped: s.dns_dropped,
            proxy_refused: s.proxy_refused,
        })
    }
}

#[utoipa::path(patch, path = "/v1/sandboxes/{id}/network", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id or name")),
    request_body = SetNetworkRequest,
    responses((status = 200, description = "Mode changed (at once for a running sandbox, at the next start for a stopped one)", body = Sandbox),
              (status = 404, description = "No such sandbox", body = ApiError),
              (status = 409, description = "The sandbox is being created or is destroyed", body = ApiError),
              (status = 422, description = "Invalid mode", body = ApiError)))]
pub async fn set_network(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SetNetworkRequest>,
) -> Result<Json<Sandbox>, AppError> {
    Ok(Json(st.manager.set_network_mode(&id, &req.network).await?))
}

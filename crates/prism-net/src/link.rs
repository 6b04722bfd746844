//! Links over netlink (rtnetlink): the veth pair of a sandbox, its addresses and default
//! route. The sandbox end is configured through a netlink socket opened inside the sandbox's
//! network namespace (by a thread of ours that joined it), never by code in the sandbox.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::sys::{AsyncSocket, TokioSocket, protocols::NETLINK_ROUTE};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::NetError;
use crate::addr::{IFNAME_PREFIX, SLOT_PREFIX, Slot};

/// Name of the sandbox end inside the sandbox.
pub const SANDBOX_IFNAME: &str = "eth0";

fn nl(op: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetError {
    move |e| NetError::Netlink {
        op,
        message: e.to_string(),
    }
}

/// A netlink handle in the daemon's own network namespace.
pub fn host_handle() -> Result<Handle, NetError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A netlink handle in the network namespace of `pid`.
pub async fn netns_handle(pid: u32) -> Result<Handle, NetError> {
    let rt = tokio::runtime::Handle::current();
    let socket = tokio::task::spawn_blocking(move || {
        prism_sys::netns::in_netns_of(pid, move || {
            let _enter = rt.enter();
            TokioSocket::new(NETLINK_ROUTE)
        })
    })
    .await
    .map_err(|e| NetError::Socket(std::io::Error::other(e)))?
    .map_err(NetError::Netns)?
    .map_err(NetError::Socket)?;
    let (conn, handle, _) = rtnetlink::from_socket(socket);
    tokio::spawn(conn);
    Ok(handle)
}

/// Index of the link called `name`, if there is one.
pub async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = std::pin::pin!(h.link().get().match_name(name.to_string()).execute());
    match links.try_next().await {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == 19 => Ok(None),
        Err(e) => Err(nl("find a link")(e)),
    }
}

/// Create the veth pair `host_if` ↔ `eth0` (in the namespace of `pid`), address both ends
/// from `slot`, bring them up and route the sandbox's traffic through the host end.
pub async fn create(host: &Handle, pid: u32, host_if: &str, slot: &Slot) -> Result<(), NetError> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(SANDBOX_IFNAME.to_string())
        .setns_by_pid(pid)
        .build();
    let msg = LinkVeth::new(host_if, SANDBOX_IFNAME)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    host.link()
        .add(msg)
        .execute()
        .await
        .map_err(nl("create the veth pair"))?;
    let idx = index_of(host, host_if)
        .await?
        .ok_or_else(|| NetError::Gone(host_if.to_string()))?;
    host.address()
        .add(idx, IpAddr::V4(slot.host), SLOT_PREFIX)
        .execute()
        .await
        .map_err(nl("address the host end"))?;
    host.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(nl("bring the host end up"))?;

    let inside = netns_handle(pid).await?;
    let sidx = index_of(&inside, SANDBOX_IFNAME)
        .await?
        .ok_or_else(|| NetError::Gone(SANDBOX_IFNAME.to_string()))?;
    inside
        .address()
        .add(sidx, IpAddr::V4(slot.sandbox), SLOT_PREFIX)
        .execute()
        .await
        .map_err(nl("address the sandbox end"))?;
    inside
        .link()
        .set(LinkUnspec::new_with_index(sidx).up().build())
        .execute()
        .await
        .map_err(nl("bring the sandbox end up"))?;
    inside
        .route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(slot.host)
                .build(),
        )
        .execute()
        .await
        .map_err(nl("add the default route"))?;
    Ok(())
}

/// Delete the link `name` (and so its veth peer). A missing link is fine.
pub async fn delete(h: &Handle, name: &str) -> Result<(), NetError> {
    let Some(idx) = index_of(h, name).await? else {
        return Ok(());
    };
    match h.link().del(idx).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == 19 => Ok(()),
        Err(e) => Err(nl("delete a link")(e)),
    }
}

fn name_of(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// Prism's host-side links (`prsb*`) with their IPv4 addresses.
pub async fn list_ours(h: &Handle) -> Result<Vec<(String, Vec<Ipv4Addr>)>, NetError> {
    let mut ours = Vec::new();
    let mut links = std::pin::pin!(h.link().get().execute());
    while let Some(m) = links.try_next().await.map_err(nl("list links"))? {
        if let Some(name) = name_of(&m)
            && name.starts_with(IFNAME_PREFIX)
        {
            ours.push((name.to_string(), m.header.index, Vec::new()));
        }
    }
    let mut addrs = std::pin::pin!(h.address().get().execute());
    while let Some(a) = addrs.try_next().await.map_err(nl("list addresses"))? {
        if let Some(entry) = ours.iter_mut().find(|e| e.1 == a.header.index) {
            for attr in &a.attributes {
                if let AddressAttribute::Local(IpAddr::V4(v4)) = attr {
                    entry.2.push(*v4);
                }
            }
        }
    }
    Ok(ours.into_iter().map(|(n, _, a)| (n, a)).collect())
}

/// Traffic counters of a sandbox, from its host end (host rx = sandbox tx).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// Counters seen from the sandbox (`rx` = received by the sandbox).
pub fn counters(host_if: &str) -> Option<Counters> {
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/class/net/{host_if}/statistics/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some(Counters {
        rx_bytes: read("tx_bytes")?,
        rx_packets: read("tx_packets")?,
        tx_bytes: read("rx_bytes")?,
        tx_packets: read("rx_packets")?,
    })
}

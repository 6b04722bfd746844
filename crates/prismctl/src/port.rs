//! `prismctl port`: the proxy URLs of a sandbox's exposed ports.

use prism_client::Client;
use prism_types::Sandbox;
use serde::Serialize;

#[derive(Debug, Serialize)]
struct PortUrl {
    port: u16,
    url: String,
}

/// The daemon URL under which `port` of sandbox `id` is proxied.
pub fn url(client: &Client, id: &str, port: u16) -> String {
    let base = client.base_url().as_str().trim_end_matches('/');
    format!("{base}/v1/sandboxes/{id}/ports/{port}/")
}

/// Prints one line per exposed port (on stderr, so stdout stays the sandbox id for scripts).
pub fn announce(client: &Client, sb: &Sandbox) {
    for &p in &sb.ports {
        eprintln!("port {p} → {}", url(client, &sb.id, p));
    }
    for p in &sb.publish {
        let ip = p.host_ip.as_deref().unwrap_or("127.0.0.1");
        eprintln!("port {} → {ip}:{} (host port)", p.port, p.host_port);
    }
}

/// `port ID [PORT]`: every exposed port's URL, or the URL of `PORT` (any port can be proxied).
pub async fn show(client: &Client, json: bool, id: &str, port: Option<u16>) -> anyhow::Result<u8> {
    let sb = client.get(id).await?;
    let ports = match port {
        Some(p) => vec![p],
        None => sb.ports.clone(),
    };
    let urls: Vec<PortUrl> = ports
        .into_iter()
        .map(|port| PortUrl {
            port,
            url: url(client, &sb.id, port),
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&urls)?);
    } else if urls.is_empty() {
        eprintln!(
            "sandbox {} exposes no ports (create it with `prismctl run -p PORT`, or use `prismctl port {} PORT`)",
            sb.id, sb.id
        );
    } else {
        for u in &urls {
            println!("{}\t{}", u.port, u.url);
        }
    }
    Ok(0)
}

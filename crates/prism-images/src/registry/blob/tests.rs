#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::registry::Credentials;

/// A one-blob HTTP server on loopback. Each request's `Range` start is recorded; the first
/// `drops` full-body answers are cut after `cut` bytes (the connection is closed mid-blob).
struct Server {
    port: u16,
    ranges: Arc<Mutex<Vec<Option<u64>>>>,
}

async fn serve(blob: Vec<u8>, cut: usize, drops: usize, honour_range: bool) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    tokio::spawn(async move {
        let mut dropped = 0;
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
            let from = text
                .lines()
                .find_map(|l| l.strip_prefix("range: bytes="))
                .and_then(|r| r.trim().trim_end_matches('-').parse::<u64>().ok());
            seen.lock().unwrap().push(from);
            let start = if honour_range {
                from.unwrap_or(0) as usize
            } else {
                0
            };
            let body = &blob[start..];
            let head = if start > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                    body.len(),
                    blob.len() - 1,
                    blob.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
            };
            let _ = sock.write_all(head.as_bytes()).await;
            if dropped < drops {
                dropped += 1;
                let _ = sock.write_all(&body[..cut.min(body.len())]).await;
                let _ = sock.flush().await;
                drop(sock); // mid-blob: the client sees a short body
                continue;
            }
            let _ = sock.write_all(body).await;
            let _ = sock.shutdown().await;
        }
    });
    Server { port, ranges }
}

fn blob() -> Vec<u8> {
    (0..600_000u32).map(|i| (i % 251) as u8).collect()
}

fn desc(blob: &[u8]) -> Descriptor {
    serde_json::from_value(serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": Digest::of(blob).to_string(),
        "size": blob.len(),
    }))
    .unwrap()
}

#[tokio::test]
async fn an_interrupted_download_resumes_with_a_range_request() {
    let data = blob();
    let srv = serve(data.clone(), 200_000, 1, true).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let client = RegistryClient::new(Credentials::Anonymous).unwrap();
    let r = Reference::parse(&format!("127.0.0.1:{}/x/y:1", srv.port)).unwrap();
    let d = desc(&data);
    let seen = Mutex::new(Vec::new());
    let progress = |p: &BlobProgress| seen.lock().unwrap().push(p.bytes);
    assert!(
        client
            .fetch_blob_with(&r, &d, &store, Some(&progress))
            .await
            .unwrap()
    );
    assert_eq!(std::fs::read(store.blob_path(&d.digest)).unwrap(), data);
    let ranges = srv.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], None);
    let from = ranges[1].unwrap();
    assert!(from > 0 && from <= 200_000, "resumed from {from}");
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.last(), Some(&(data.len() as u64)));
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
}

#[tokio::test]
async fn a_partial_file_from_an_earlier_pull_is_resumed_and_verified() {
    let data = blob();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let client = RegistryClient::new(Credentials::Anonymous).unwrap();
    let d = desc(&data);
    let partial = store
        .root()
        .join("tmp")
        .join(format!("partial-{}", d.digest.hex()));

    // Every attempt is cut: the pull fails, the partial stays for the next one.
    let srv = serve(data.clone(), 100_000, usize::MAX, true).await;
    let r = Reference::parse(&format!("127.0.0.1:{}/x/y:1", srv.port)).unwrap();
    assert!(client.fetch_blob(&r, &d, &store).await.is_err());
    assert!(!store.has_blob(&d.digest), "nothing half-written is used");
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept >= 100_000, "{kept}");

    // The next pull asks for the rest only.
    let srv = serve(data.clone(), 0, 0, true).await;
    let r = Reference::parse(&format!("127.0.0.1:{}/x/y:1", srv.port)).unwrap();
    assert!(client.fetch_blob(&r, &d, &store).await.unwrap());
    assert_eq!(srv.ranges.lock().unwrap().clone(), vec![Some(kept)]);
    assert_eq!(std::fs::read(store.blob_path(&d.digest)).unwrap(), data);
    assert!(!partial.exists());

    // A corrupt partial: the resumed blob does not verify and is fetched again whole.
    let other = blob().into_iter().map(|b| b ^ 1).collect::<Vec<_>>();
    let d2 = desc(&other);
    let partial2 = store
        .root()
        .join("tmp")
        .join(format!("partial-{}", d2.digest.hex()));
    std::fs::write(&partial2, &data[..1000]).unwrap();
    let srv = serve(other.clone(), 0, 0, true).await;
    let r = Reference::parse(&format!("127.0.0.1:{}/x/y:1", srv.port)).unwrap();
    assert!(client.fetch_blob(&r, &d2, &store).await.unwrap());
    assert_eq!(srv.ranges.lock().unwrap().clone(), vec![Some(1000), None]);
    assert_eq!(std::fs::read(store.blob_path(&d2.digest)).unwrap(), other);

    // A server that ignores Range (answers 200 with the whole blob) still works.
    let third: Vec<u8> = blob().into_iter().map(|b| b ^ 2).collect();
    let d3 = desc(&third);
    let partial3 = store
        .root()
        .join("tmp")
        .join(format!("partial-{}", d3.digest.hex()));
    std::fs::write(&partial3, &third[..5000]).unwrap();
    let srv = serve(third.clone(), 0, 0, false).await;
    let r = Reference::parse(&format!("127.0.0.1:{}/x/y:1", srv.port)).unwrap();
    assert!(client.fetch_blob(&r, &d3, &store).await.unwrap());
    assert_eq!(std::fs::read(store.blob_path(&d3.digest)).unwrap(), third);
}

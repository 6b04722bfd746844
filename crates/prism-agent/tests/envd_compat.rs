//! envd endpoints the E2B SDKs rely on beyond the RPC services: `POST /init` (the sandbox's
//! environment) and gzip-compressed raw uploads on `POST /files`.

mod common;

use std::io::Write as _;

use bytes::Bytes;
use common::{Agent, collect, sh};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};

async fn post(
    agent: &Agent,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, String) {
    let mut req = Request::post(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = agent
        .client
        .raw(req.body(Full::new(Bytes::from(body))).expect("request"))
        .await
        .expect("send");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn stdout_of(agent: &Agent, script: &str) -> String {
    let out = collect(agent.client.start(&sh(script)).await.expect("start")).await;
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn init_sets_env_for_later_processes_and_request_env_wins() {
    let agent = Agent::start();
    assert_eq!(stdout_of(&agent, "echo \"[$E2B_A]\"").await, "[]\n");
    let (status, body) = post(
        &agent,
        "/init",
        &[(header::CONTENT_TYPE.as_str(), "application/json")],
        br#"{"envVars":{"E2B_A":"one","E2B_B":"two"},"accessToken":"ignored"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(
        stdout_of(&agent, "echo \"$E2B_A $E2B_B\"").await,
        "one two\n"
    );
    // A second init replaces one value and keeps the other.
    post(
        &agent,
        "/init",
        &[],
        br#"{"envVars":{"E2B_A":"uno"}}"#.to_vec(),
    )
    .await;
    let mut req = sh("echo \"$E2B_A $E2B_B\"");
    if let Some(p) = req.process.as_mut() {
        p.envs.insert("E2B_B".into(), "per-process".into());
    }
    let out = collect(agent.client.start(&req).await.expect("start")).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "uno per-process\n");
    // Malformed bodies are refused, not applied.
    let (status, _) = post(&agent, "/init", &[], b"{not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn gzip_uploads_are_stored_decompressed() {
    let agent = Agent::start();
    let plain: Vec<u8> = (0..300_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&plain).expect("compress");
    let gz = enc.finish().expect("finish");
    assert!(gz.len() < plain.len());
    let path = agent.path_str("up/zipped.bin");
    let (status, body) = post(
        &agent,
        &format!("/files?path={path}"),
        &[
            (header::CONTENT_TYPE.as_str(), "application/octet-stream"),
            (header::CONTENT_ENCODING.as_str(), "gzip"),
        ],
        gz.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        std::fs::read(agent.path("up/zipped.bin")).expect("read"),
        plain
    );

    // Corrupt gzip and unknown encodings are errors, not silently stored bytes.
    let (status, _) = post(
        &agent,
        &format!("/files?path={}", agent.path_str("bad.bin")),
        &[(header::CONTENT_ENCODING.as_str(), "gzip")],
        b"definitely not gzip".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = post(
        &agent,
        &format!("/files?path={}", agent.path_str("br.bin")),
        &[(header::CONTENT_ENCODING.as_str(), "br")],
        gz,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("Content-Encoding"), "{body}");
    assert!(!agent.path("br.bin").exists());
}

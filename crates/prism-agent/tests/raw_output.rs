//! Process output in both encodings: raw envelopes for clients that ask (prismd, through
//! `AgentClient`), Connect JSON with base64 for everyone else (the E2B SDKs), byte for byte the
//! same output.

mod common;

use common::{Agent, collect, sh};
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use prism_proto::envelope::{self, CONTENT_TYPE_STREAM, Decoder};
use prism_proto::process::{DataEvent, ProcessEvent, StartResponse};
use prism_proto::raw_output::{FLAG_RAW_DATA, RAW_OUTPUT_HEADER, RAW_OUTPUT_VALUE};

/// A few MiB on stdout with a recognisable pattern, and a line on stderr.
const SCRIPT: &str = "seq 1 400000; echo done >&2";

fn expected_stdout() -> Vec<u8> {
    (1..=400_000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect()
}

/// `Start` over a raw request; returns (stdout, stderr, envelope flags seen).
async fn start_raw(agent: &Agent, raw_header: bool) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let body = envelope::encode_message(&sh(SCRIPT)).expect("encode");
    let mut req = Request::post("/process.Process/Start")
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, CONTENT_TYPE_STREAM);
    if raw_header {
        req = req.header(RAW_OUTPUT_HEADER, RAW_OUTPUT_VALUE);
    }
    let resp = agent
        .client
        .raw(req.body(Full::new(body)).expect("request"))
        .await
        .expect("send");
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let mut dec = Decoder::default();
    dec.push(&bytes);
    let (mut out, mut err, mut flags) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(env) = dec.next_envelope().expect("framing") {
        flags.push(env.flags);
        if env.is_end_stream() {
            break;
        }
        let data = if env.flags & FLAG_RAW_DATA != 0 {
            prism_proto::raw_output::decode_raw(env.data).expect("a known stream")
        } else {
            match serde_json::from_slice::<StartResponse>(&env.data)
                .expect("json")
                .event
            {
                ProcessEvent::Data(d) => d,
                _ => continue,
            }
        };
        match data {
            DataEvent::Stdout(b) => out.extend_from_slice(&b),
            DataEvent::Stderr(b) => err.extend_from_slice(&b),
            DataEvent::Pty(_) => panic!("no terminal was asked for"),
        }
    }
    (out, err, flags)
}

#[tokio::test]
async fn e2b_clients_get_json_envelopes_only() {
    let agent = Agent::start();
    let (out, err, flags) = start_raw(&agent, false).await;
    assert_eq!(out, expected_stdout());
    assert_eq!(err, b"done\n");
    assert!(flags.iter().all(|f| f & FLAG_RAW_DATA == 0), "{flags:?}");
}

#[tokio::test]
async fn raw_output_carries_the_same_bytes() {
    let agent = Agent::start();
    let (out, err, flags) = start_raw(&agent, true).await;
    assert_eq!(out, expected_stdout());
    assert_eq!(err, b"done\n");
    assert!(flags.contains(&FLAG_RAW_DATA), "{flags:?}");
    // The typed client asks for raw output and decodes it into the usual events.
    let typed = collect(agent.client.start(&sh(SCRIPT)).await.expect("start")).await;
    assert_eq!(typed.stdout, expected_stdout());
    assert_eq!(typed.stderr, b"done\n");
    assert_eq!(typed.end.map(|e| e.exit_code), Some(0));
}

//! `prismctl code`: runs code in a context, printing output as it comes and the result's
//! `text/plain`; the exit code is 1 when the code raised (or timed out, or was interrupted).

use std::io::{Read, Write};

use futures_util::StreamExt;
use prism_client::Client;
use prism_types::code::{CodeEvent, RunCodeRequest, RunStatus};

use crate::cli::CodeArgs;

pub async fn run(client: &Client, json: bool, a: CodeArgs) -> anyhow::Result<u8> {
    let code = match (a.code, a.file.as_deref()) {
        (Some(c), _) => c,
        (None, Some("-")) => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
        (None, Some(f)) => {
            std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("cannot read {f}: {e}"))?
        }
        (None, None) => anyhow::bail!("-c CODE or -f FILE is required"),
    };
    let language = match (&a.lang, &a.context) {
        (None, None) => Some("python".to_string()),
        (l, _) => l.clone(),
    };
    let req = RunCodeRequest {
        code,
        language,
        context_id: a.context,
        timeout_s: a.timeout,
        env: crate::parse_kv(&a.env, "environment variable")?,
    };
    let mut events = client.run_code(&a.id, &req).await?;
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let mut status = RunStatus::Crashed;
    while let Some(ev) = events.next().await {
        let ev = ev?;
        if json {
            writeln!(out, "{}", serde_json::to_string(&ev)?)?;
        } else {
            match &ev {
                CodeEvent::Stdout { text } => out.write_all(text.as_bytes())?,
                CodeEvent::Stderr { text } => err.write_all(text.as_bytes())?,
                CodeEvent::Result { data } | CodeEvent::Display { data } => {
                    match data.get("text/plain") {
                        Some(serde_json::Value::String(s)) => writeln!(out, "{s}")?,
                        Some(v) => writeln!(out, "{v}")?,
                        None => {}
                    }
                    let rich: Vec<&str> = data
                        .keys()
                        .map(String::as_str)
                        .filter(|k| *k != "text/plain")
                        .collect();
                    if !rich.is_empty() {
                        writeln!(err, "[also available: {}; use --json]", rich.join(", "))?;
                    }
                }
                CodeEvent::Error(e) => {
                    if e.traceback.is_empty() {
                        writeln!(err, "{}: {}", e.name, e.value)?;
                    } else {
                        err.write_all(e.traceback.as_bytes())?;
                        if !e.traceback.ends_with('\n') {
                            writeln!(err)?;
                        }
                    }
                }
                CodeEvent::ExecutionCount { .. } => {}
                CodeEvent::End { .. } => {}
            }
        }
        out.flush()?;
        if let CodeEvent::End { status: s, .. } = ev {
            status = s;
        }
    }
    Ok(if status == RunStatus::Ok { 0 } else { 1 })
}

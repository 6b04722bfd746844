//! End-to-end tests of code contexts and handler invocation: the real prismd, a real sandbox
//! (namespace runtime, root), the host's python3 and node through the `base` template.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use futures_util::StreamExt;
use prism_client::Client;
use prism_types::CreateSandboxRequest;
use prism_types::code::{
    CodeEvent, CreateContextRequest, InvokeRequest, RunCodeRequest, RunStatus,
};
use support::{Daemon, prismctl};

/// Everything a run produced.
#[derive(Debug, Default)]
struct Run {
    /// stdout/stderr chunks in arrival order, tagged `o:`/`e:`.
    output: Vec<String>,
    result: Option<BTreeMap<String, serde_json::Value>>,
    error: Option<prism_types::code::CodeError>,
    count: Option<u64>,
    status: Option<RunStatus>,
}

impl Run {
    fn text(&self) -> String {
        self.result
            .as_ref()
            .unwrap_or_else(|| panic!("no result: {self:?}"))["text/plain"]
            .as_str()
            .unwrap()
            .to_string()
    }
    fn stdout(&self) -> String {
        self.output
            .iter()
            .filter_map(|s| s.strip_prefix("o:"))
            .collect()
    }
}

/// Joins consecutive chunks of the same stream.
fn merged(output: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for chunk in output {
        match out.last_mut() {
            Some(last) if last[..2] == chunk[..2] => last.push_str(&chunk[2..]),
            _ => out.push(chunk.clone()),
        }
    }
    out
}

fn collect(run: &mut Run, ev: CodeEvent) {
    match ev {
        CodeEvent::Stdout { text } => run.output.push(format!("o:{text}")),
        CodeEvent::Stderr { text } => run.output.push(format!("e:{text}")),
        CodeEvent::Result { data } => run.result = Some(data),
        CodeEvent::Error(e) => run.error = Some(e),
        CodeEvent::ExecutionCount { execution_count } => run.count = Some(execution_count),
        CodeEvent::End { status, .. } => run.status = Some(status),
        CodeEvent::Display { .. } => {}
    }
}

async fn run(c: &Client, sb: &str, ctx: &str, code: &str) -> Run {
    let req = RunCodeRequest {
        code: code.into(),
        context_id: Some(ctx.into()),
        ..Default::default()
    };
    run_req(c, sb, &req).await
}

async fn run_req(c: &Client, sb: &str, req: &RunCodeRequest) -> Run {
    let mut events = c.run_code(sb, req).await.unwrap();
    let mut out = Run::default();
    while let Some(ev) = events.next().await {
        collect(&mut out, ev.unwrap());
    }
    assert!(out.status.is_some(), "no end event: {out:?}");
    out
}

/// A run in context `ctx` with `env` for that run only.
async fn run_env(c: &Client, sb: &str, ctx: &str, code: &str, env: &[(&str, &str)]) -> Run {
    let req = RunCodeRequest {
        code: code.into(),
        context_id: Some(ctx.into()),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    run_req(c, sb, &req).await
}

async fn context(c: &Client, sb: &str, lang: &str) -> String {
    let req = CreateContextRequest {
        language: lang.into(),
        ..Default::default()
    };
    c.create_context(sb, &req).await.unwrap().id
}

/// A daemon in a fresh state directory with one sandbox created from `sandbox` (JSON).
async fn daemon_with(sandbox: &str) -> (tempfile::TempDir, Daemon) {
    // reqwest is built with `rustls-no-provider` (prism-images): install ring's provider, as
    // the registry client does, before prism-client builds its reqwest client.
    let _ = prism_images::registry::RegistryClient::new(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let req: CreateSandboxRequest = serde_json::from_str(sandbox).unwrap();
    d.client.create(&req).await.unwrap();
    (dir, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_contexts_keep_state_and_report_results_errors_and_interrupts() {
    if !support::root_or_skip("code_contexts_keep_state_and_report_results_errors_and_interrupts") {
        return;
    }
    let (_dir, d) = daemon_with(r#"{"name":"code"}"#).await;
    let c = &d.client;

    // State, imports and cwd survive between runs; the last expression is the result.
    let py = context(c, "code", "python").await;
    let r = run(c, "code", &py, "import os\nx = 20\nos.chdir('/tmp')\nx + 1").await;
    assert_eq!(
        (r.text(), r.status, r.count),
        ("21".into(), Some(RunStatus::Ok), Some(1))
    );
    let r = run(c, "code", &py, "x * 2, os.getcwd()").await;
    assert_eq!(r.text(), "(40, '/tmp')");
    assert_eq!(r.count, Some(2));

    // stdout/stderr interleaving order is kept.
    let r = run(
        c,
        "code",
        &py,
        "import sys\nprint('a')\nprint('b', file=sys.stderr)\nprint('c')\nprint('d', file=sys.stderr)",
    )
    .await;
    assert_eq!(
        merged(&r.output),
        ["o:a\n", "e:b\n", "o:c\n", "e:d\n"],
        "{:?}",
        r.output
    );
    assert!(r.result.is_none());

    // Subprocess output (written to the inherited fds) arrives too.
    let r = run(
        c,
        "code",
        &py,
        "import subprocess\nsubprocess.run(['echo', 'from-child'])\nNone",
    )
    .await;
    assert!(r.stdout().contains("from-child"), "{r:?}");

    // An exception is a structured error, and the context stays usable.
    let r = run(c, "code", &py, "def f():\n    return 1 / 0\nf()").await;
    let e = r.error.clone().unwrap();
    assert_eq!(
        (e.name.as_str(), e.value.as_str()),
        ("ZeroDivisionError", "division by zero")
    );
    assert!(e.traceback.contains("in f"), "{}", e.traceback);
    assert_eq!(r.status, Some(RunStatus::Error));
    assert_eq!(run(c, "code", &py, "x").await.text(), "20");

    // Rich output: an object with _repr_png_ gives image/png (base64) next to text/plain.
    let r = run(
        c,
        "code",
        &py,
        "class Chart:\n    def _repr_png_(self):\n        return b'\\x89PNG\\r\\n\\x1a\\nfake'\n    def _repr_html_(self):\n        return '<b>chart</b>'\nChart()",
    )
    .await;
    let data = r.result.unwrap();
    assert_eq!(data["image/png"], "iVBORw0KGgpmYWtl");
    assert_eq!(data["text/html"], "<b>chart</b>");
    assert!(
        data["text/plain"]
            .as_str()
            .unwrap()
            .contains("Chart object")
    );

    // Interrupt stops an infinite loop; the context survives with its state.
    let req = RunCodeRequest {
        code: "print('looping', flush=True)\nwhile True:\n    pass".into(),
        context_id: Some(py.clone()),
        ..Default::default()
    };
    let mut events = c.run_code("code", &req).await.unwrap();
    let mut r = Run::default();
    while let Some(ev) = events.next().await {
        let ev = ev.unwrap();
        if matches!(&ev, CodeEvent::Stdout { text } if text.contains("looping")) {
            c.interrupt_context("code", &py).await.unwrap();
        }
        collect(&mut r, ev);
    }
    assert_eq!(r.status, Some(RunStatus::Interrupted), "{r:?}");
    assert_eq!(r.error.unwrap().name, "KeyboardInterrupt");
    assert_eq!(run(c, "code", &py, "x + 1").await.text(), "21");

    // A per-run timeout interrupts too.
    let req = RunCodeRequest {
        code: "while True:\n    pass".into(),
        context_id: Some(py.clone()),
        timeout_s: Some(1),
        ..Default::default()
    };
    let r = run_req(c, "code", &req).await;
    assert_eq!(r.status, Some(RunStatus::Timeout), "{r:?}");
    assert_eq!(run(c, "code", &py, "x").await.text(), "20");

    // Two contexts are isolated.
    let other = context(c, "code", "python").await;
    let r = run(c, "code", &other, "x").await;
    assert_eq!(r.error.unwrap().name, "NameError");
    let list = c.list_contexts("code").await.unwrap();
    assert!(list.iter().any(|x| x.id == py) && list.iter().any(|x| x.id == other));

    // Restart drops the state.
    c.restart_context("code", &other).await.unwrap();
    c.delete_context("code", &other).await.unwrap();
    let gone = c.delete_context("code", &other).await.unwrap_err();
    assert_eq!(gone.status(), Some(404));

    // JavaScript keeps state (let/const and globals) between runs.
    let js = context(c, "code", "javascript").await;
    let r = run(
        c,
        "code",
        &js,
        "let n = 40; const k = 2; console.log('hi'); n + k",
    )
    .await;
    assert_eq!((r.text(), r.stdout()), ("42".into(), "hi\n".into()));
    assert_eq!(run(c, "code", &js, "n * k").await.text(), "80");
    let r = run(c, "code", &js, "null.x").await;
    assert_eq!(r.error.unwrap().name, "TypeError");
    assert_eq!(
        run(c, "code", &js, "await Promise.resolve(n)").await.status,
        Some(RunStatus::Ok)
    );

    // Bash keeps cwd, variables and functions.
    let sh = context(c, "code", "bash").await;
    run(c, "code", &sh, "cd /tmp; V=7; f() { echo \"f$1\"; }").await;
    assert_eq!(
        run(c, "code", &sh, "pwd; echo $V; f 1").await.stdout(),
        "/tmp\n7\nf1\n"
    );

    // Clear 4xx errors: unknown language, unknown context.
    let req = RunCodeRequest {
        code: "1".into(),
        language: Some("cobol".into()),
        ..Default::default()
    };
    let e = c.run_code("code", &req).await.err().unwrap();
    assert!(matches!(e.status(), Some(400..=499)), "{e}");
    assert!(e.to_string().contains("cobol"), "{e}");
    let req = RunCodeRequest {
        code: "1".into(),
        context_id: Some("nope".into()),
        ..Default::default()
    };
    let e = c.run_code("code", &req).await.err().unwrap();
    assert_eq!(e.status(), Some(404), "{e}");

    // A language without a context runs in that language's default context.
    let req = RunCodeRequest {
        code: "y = 5\ny".into(),
        language: Some("python".into()),
        ..Default::default()
    };
    assert_eq!(run_req(c, "code", &req).await.text(), "5");

    // Handlers: JSON in, JSON out, logs, structured errors.
    let inv = InvokeRequest {
        language: "python".into(),
        code: Some("def handler(event):\n    print('got', event['n'])\n    return {'double': event['n'] * 2}".into()),
        event: serde_json::json!({"n": 21}),
        ..Default::default()
    };
    let out = c.invoke("code", &inv).await.unwrap();
    assert_eq!(out.result, serde_json::json!({"double": 42}));
    assert_eq!(out.logs.stdout, "got 21\n");
    assert!(out.error.is_none());
    let inv = InvokeRequest {
        language: "javascript".into(),
        code: Some("exports.main = async (e) => ({sum: e.a + e.b});".into()),
        handler: Some("main".into()),
        event: serde_json::json!({"a": 1, "b": 2}),
        ..Default::default()
    };
    assert_eq!(
        c.invoke("code", &inv).await.unwrap().result,
        serde_json::json!({"sum": 3})
    );
    let inv = InvokeRequest {
        language: "python".into(),
        code: Some("def handler(event):\n    raise ValueError('bad event')".into()),
        ..Default::default()
    };
    let out = c.invoke("code", &inv).await.unwrap();
    let e = out.error.unwrap();
    assert_eq!(
        (e.name.as_str(), e.value.as_str()),
        ("ValueError", "bad event")
    );
    assert_eq!(out.result, serde_json::Value::Null);

    // prismctl: output, result text, exit codes.
    let out = Command::new(prismctl())
        .args([
            "--api",
            &d.url(),
            "code",
            "code",
            "--lang",
            "python",
            "-c",
            "print('out')\n6*7",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n42\n");
    assert!(out.status.success());
    let out = Command::new(prismctl())
        .args([
            "--api",
            &d.url(),
            "code",
            "code",
            "-c",
            "raise KeyError('k')",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KeyError"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_env_holds_for_that_run_only_in_every_language() {
    if !support::root_or_skip("a_runs_env_holds_for_that_run_only_in_every_language") {
        return;
    }
    let (_dir, d) = daemon_with(r#"{"name":"env","env":{"SB_VAR":"from-create"}}"#).await;
    let c = &d.client;

    // Python: the run and the processes it starts see the run's env (which may shadow the
    // sandbox's); the next run sees the values from before.
    let py = context(c, "env", "python").await;
    let code = "import os, subprocess\n(os.environ['A'], os.environ['SB_VAR'], \
                subprocess.run(['sh', '-c', 'echo $A'], capture_output=True, text=True).stdout)";
    let r = run_env(c, "env", &py, code, &[("A", "1"), ("SB_VAR", "per-run")]).await;
    assert_eq!(r.text(), "('1', 'per-run', '1\\n')", "{r:?}");
    let r = run(c, "env", &py, "(os.environ.get('A'), os.environ['SB_VAR'])").await;
    assert_eq!(r.text(), "(None, 'from-create')");
    // Restored also when the run raised.
    let r = run_env(
        c,
        "env",
        &py,
        "raise ValueError(os.environ['A'])",
        &[("A", "2")],
    )
    .await;
    assert_eq!(r.error.unwrap().value, "2");
    assert_eq!(run(c, "env", &py, "os.environ.get('A')").await.result, None);

    // The sandbox's env reaches the default context of a language and handlers too, and a
    // context's own env comes over it.
    let req = RunCodeRequest {
        code: "import os; os.environ['SB_VAR']".into(),
        language: Some("python".into()),
        env: [("A".to_string(), "in-default".to_string())].into(),
        ..Default::default()
    };
    assert_eq!(run_req(c, "env", &req).await.text(), "'from-create'");
    let inv = InvokeRequest {
        language: "python".into(),
        code: Some("import os\ndef handler(e):\n    return os.environ['SB_VAR']".into()),
        ..Default::default()
    };
    let out = c.invoke("env", &inv).await.unwrap();
    assert_eq!(out.result, serde_json::json!("from-create"), "{out:?}");
    let own = CreateContextRequest {
        language: "python".into(),
        env: [("SB_VAR".to_string(), "own".to_string())].into(),
        ..Default::default()
    };
    let own = c.create_context("env", &own).await.unwrap().id;
    let r = run(c, "env", &own, "import os; os.environ['SB_VAR']").await;
    assert_eq!(r.text(), "'own'");

    // JavaScript.
    let js = context(c, "env", "javascript").await;
    let r = run_env(
        c,
        "env",
        &js,
        "process.env.B + process.env.SB_VAR",
        &[("B", "2")],
    )
    .await;
    assert_eq!(r.text(), "'2from-create'");
    let r = run(c, "env", &js, "String(process.env.B)").await;
    assert_eq!(r.text(), "'undefined'");

    // Bash: a variable the context had is put back; one it did not have is unset; quotes and
    // spaces in values survive.
    let sh = context(c, "env", "bash").await;
    run(c, "env", &sh, "export KEEP=k").await;
    let r = run_env(
        c,
        "env",
        &sh,
        "echo \"$KEEP|$NEW\"; sh -c 'echo \"$NEW\"'",
        &[("KEEP", "tmp"), ("NEW", "n v'q")],
    )
    .await;
    assert_eq!(r.stdout(), "tmp|n v'q\nn v'q\n");
    let r = run(c, "env", &sh, "echo \"$KEEP|${NEW-unset}\"").await;
    assert_eq!(r.stdout(), "k|unset\n");

    // A name that is not a variable name is refused (422) before anything runs.
    let req = RunCodeRequest {
        code: "1".into(),
        context_id: Some(py.clone()),
        env: [("1A".to_string(), "x".to_string())].into(),
        ..Default::default()
    };
    let e = c.run_code("env", &req).await.err().unwrap();
    assert_eq!(e.status(), Some(422), "{e}");
    assert!(e.to_string().contains("1A"), "{e}");

    // prismctl code -e.
    let out = Command::new(prismctl())
        .args(["--api", &d.url(), "code", "env", "-e", "X=from-cli", "-c"])
        .arg("import os; os.environ['X']")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "'from-cli'\n",
        "{out:?}"
    );
}

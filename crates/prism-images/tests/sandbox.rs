//! A sandbox of the namespace runtime runs from a pulled image: overlay of the image's layers
//! (whiteouts, opaque dirs and hard links as the image says), the static agent as PID 1.

mod support;

use std::path::PathBuf;

use futures_util::StreamExt;
use prism_core::namespace::{NamespaceConfig, NamespaceRuntime};
use prism_core::{Limits, Runtime, SandboxSpec};
use prism_images::{Credentials, ImageStore, RegistryClient, pull};
use prism_proto::AgentClient;
use prism_proto::process::{DataEvent, ProcessConfig, ProcessEvent, StartRequest};
use support::{Registry, busybox_layout, skip, state_dir};

fn agent_path() -> PathBuf {
    std::env::var_os("PRISM_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/x86_64-unknown-linux-musl/debug/prism-agent")
        })
}

async fn run(client: &AgentClient, argv: &[&str], env: &[(String, String)]) -> (i32, String) {
    let req = StartRequest {
        process: Some(ProcessConfig {
            cmd: argv[0].into(),
            args: argv[1..].iter().map(|s| s.to_string()).collect(),
            envs: env.iter().cloned().collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut events = client.start(&req).await.expect("start");
    let (mut code, mut out) = (-1, String::new());
    while let Some(ev) = events.next().await {
        match ev.expect("event") {
            ProcessEvent::Data(DataEvent::Stdout(b) | DataEvent::Stderr(b)) => {
                out.push_str(&String::from_utf8_lossy(&b))
            }
            ProcessEvent::End(e) => code = e.exit_code,
            _ => {}
        }
    }
    (code, out)
}

/// Destroys the sandbox and removes its cgroups whatever the test's outcome.
struct Cleanup<'a> {
    runtime: &'a NamespaceRuntime,
    id: &'static str,
    cgroup_parent: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.runtime.destroy(self.id);
        if let Ok(cgroups) = prism_sys::cgroup::detect(&self.cgroup_parent) {
            let _ = cgroups.remove_parent();
        }
    }
}

#[test]
fn a_sandbox_runs_from_a_pulled_image_as_root() {
    if skip(
        "a_sandbox_runs_from_a_pulled_image",
        &["docker-registry", "skopeo"],
    ) {
        return;
    }
    let agent = agent_path();
    assert!(
        agent.is_file(),
        "{} missing: run scripts/build",
        agent.display()
    );
    let reg = Registry::start();
    let layout_dir = tempfile::tempdir().expect("layout");
    busybox_layout(layout_dir.path(), "1");
    reg.push(layout_dir.path(), "1", "test/run:1");

    let state = state_dir();
    let store = ImageStore::open(state.path()).expect("store");
    let client = RegistryClient::new(Credentials::Anonymous).expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let reference = format!("127.0.0.1:{}/test/run:1", reg.port);
    let rec = rt
        .block_on(pull(&store, &client, &reference))
        .expect("pull")
        .record;
    let defaults = prism_images::ProcessDefaults::from(&rec.config);

    let cgroup_parent = format!("prism-images-it-{}", std::process::id());
    let cgroups = prism_sys::cgroup::detect(&cgroup_parent).expect("cgroups");
    let runtime = NamespaceRuntime::new(
        NamespaceConfig::new(state.path().join("sandboxes"), agent),
        cgroups,
    )
    .expect("runtime");
    let spec = SandboxSpec {
        id: "img".into(),
        hostname: "img".into(),
        rootfs: prism_images::rootfs(&store, &rec).expect("rootfs"),
        limits: Limits::default(),
        security: Default::default(),
    };
    let handle = runtime.start(&spec).expect("start sandbox from image");
    let _cleanup = Cleanup {
        runtime: &runtime,
        id: "img",
        cgroup_parent,
    };
    let agent = AgentClient::new(&handle.agent_socket);
    let script = "id -u; echo $GREETING; cat /opt/data/new; ls /opt/data; \
                  test -e /etc/old && echo WHITEOUT-BROKEN; \
                  stat -c %h /bin/hello; /bin/hello; echo x > /opt/data/w && cat /opt/data/w";
    let (code, out) = rt.block_on(run(&agent, &["/bin/sh", "-c", script], &defaults.env));
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "0\nhi\nnew\nnew\n2\nhello\nx\n");
}

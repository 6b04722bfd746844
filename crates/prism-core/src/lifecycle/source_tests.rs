//! Sandboxes from resolved sources (images) on the fake runtime: pinning, defaults, errors.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use prism_store::SqliteStore;
use prism_types::CreateSandboxRequest;

use super::fake::{FakeAgents, FakeRuntime};
use super::source::{IMAGE_PREFIX, ProcessDefaults, ResolveErrorKind};
use super::*;
use crate::{LayerMount, RootfsSpec};

/// Resolves `img:*` (unknown names fail) and counts rootfs lookups.
#[derive(Default)]
struct FakeResolver {
    rootfs_calls: Mutex<Vec<String>>,
}

impl RootfsResolver for FakeResolver {
    fn resolve(&self, source: Source) -> BoxFuture<'_, Result<Resolved, ResolveError>> {
        let (Source::Image(r) | Source::Template(r)) = source;
        Box::pin(async move {
            if r != "img:1" {
                return Err(ResolveError::new(
                    ResolveErrorKind::NotFound,
                    "no such image",
                ));
            }
            Ok(Resolved {
                pinned: format!("{IMAGE_PREFIX}img@sha256:ab"),
                reference: "img@sha256:ab".into(),
                defaults: ProcessDefaults {
                    env: vec![("PATH".into(), "/bin".into()), ("A".into(), "img".into())],
                    cmd: vec!["echo".into(), "from-image".into()],
                    cwd: Some("/app".into()),
                    user: Some("1000".into()),
                    ..Default::default()
                },
            })
        })
    }

    fn rootfs(&self, pinned: &str) -> Result<RootfsSpec, ResolveError> {
        self.rootfs_calls.lock().unwrap().push(pinned.to_string());
        Ok(RootfsSpec {
            mounts: vec![LayerMount {
                target: "/".into(),
                lowers: vec!["/nonexistent-layer".into()],
            }],
        })
    }
}

fn req(json: &str) -> CreateSandboxRequest {
    serde_json::from_str(json).unwrap()
}

fn manager(dir: &tempfile::TempDir) -> SandboxManager {
    let rt = FakeRuntime::new(dir.path());
    let agents = FakeAgents::for_runtime(&rt);
    let store = Arc::new(SqliteStore::open(&dir.path().join("state.db")).unwrap());
    SandboxManager::new(store, rt, agents, ManagerConfig::new(dir.path().into())).unwrap()
}

#[tokio::test]
async fn image_sandboxes_are_pinned_and_get_the_image_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(&dir);
    // No resolver: a clear refusal, nothing created.
    assert!(matches!(
        m.create(req(r#"{"image":"img:1"}"#)).await,
        Err(LifecycleError::NoImages)
    ));
    let resolver = Arc::new(FakeResolver::default());
    m.set_resolver(resolver.clone());
    let sb = m
        .create(req(r#"{"name":"a","image":"img:1","env":{"A":"req"}}"#))
        .await
        .unwrap();
    assert_eq!(sb.template, "image:img@sha256:ab");
    assert_eq!(sb.env["A"], "req");
    assert_eq!(sb.env["PATH"], "/bin");
    assert_eq!(sb.cmd, Some(vec!["echo".into(), "from-image".into()]));
    let rec = m.record("a").await.unwrap();
    assert_eq!(rec.spec.image.as_deref(), Some("img@sha256:ab"));
    assert_eq!(
        (rec.spec.cwd.as_deref(), rec.spec.user.as_deref()),
        (Some("/app"), Some("1000"))
    );
    assert!(m.sources_in_use().await.unwrap().contains(&sb.template));
    // A restart resolves the pinned key, not the tag.
    m.restart("a").await.unwrap();
    assert!(
        resolver
            .rootfs_calls
            .lock()
            .unwrap()
            .iter()
            .all(|p| p == "image:img@sha256:ab")
    );
    m.destroy("a").await.unwrap();
    assert!(m.sources_in_use().await.unwrap().is_empty());

    // Unknown image and image + template: errors, and no sandbox left behind.
    assert!(matches!(
        m.create(req(r#"{"image":"nope"}"#)).await,
        Err(LifecycleError::Resolve(e)) if e.kind == ResolveErrorKind::NotFound
    ));
    assert!(matches!(
        m.create(req(r#"{"image":"img:1","template":"base"}"#))
            .await,
        Err(LifecycleError::InvalidRequest(_))
    ));
    assert!(matches!(
        m.create(req(r#"{"image":"img:1","cwd":"relative"}"#)).await,
        Err(LifecycleError::InvalidRequest(_))
    ));
    let (all, _) = m.list(prism_store::ListFilter::default()).await.unwrap();
    assert!(all.is_empty(), "nothing but the destroyed one: {all:?}");
}

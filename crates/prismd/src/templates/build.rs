//! Building a template version: record it (`building`), make a sandbox from its source, run
//! the setup commands there one by one, stop it, capture each writable layer into the image
//! store, and record the version `ready` (or `failed` with the failing command's output). The
//! build sandbox is destroyed in every case. The build runs as its own task, so a client that
//! goes away does not leave a half-built version behind.

use std::collections::BTreeMap;
use std::sync::Arc;

use prism_core::lifecycle::source::IMAGE_PREFIX;
use prism_core::lifecycle::{ResolveError, RootfsResolver, Source, now_ms, templates as core};
use prism_images::ImageStore;
use prism_store::templates::{TemplateBuild, TemplateRecord};
use prism_types::templates::{BuildEvent, Template, TemplateSpec, TemplateStatus};
use prism_types::{CreateSandboxRequest, DEFAULT_TEMPLATE, ExecRequest};
use tokio::sync::mpsc;

use super::{TemplateError, Templates, to_api};
use crate::error::chain;
use crate::resolver::ImageResolver;

/// Label of a build sandbox: the `name:version` it builds.
pub const BUILD_LABEL: &str = "prism.template-build";
/// Output of a failed command kept in the template's error (its tail).
const ERROR_OUTPUT_BYTES: usize = 8 << 10;
/// Files the runtime writes into every sandbox's root upper layer: not the template's.
const RUNTIME_FILES: &[&str] = &["etc/hostname", "etc/hosts"];

type Events = Option<mpsc::Sender<BuildEvent>>;

async fn send(events: &Events, ev: BuildEvent) {
    if let Some(tx) = events {
        // A client that went away does not stop the build.
        let _ = tx.send(ev).await;
    }
}

/// The tail of `s`, at most `max` bytes, cut at a character boundary.
fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// What a build produced, with the defaults of the version's sandboxes: the image's config
/// under the spec's.
fn defaults(
    spec: &TemplateSpec,
    source: String,
    layers: Vec<String>,
    size_bytes: u64,
    image: Option<prism_core::lifecycle::Resolved>,
) -> TemplateBuild {
    let d = image.map(|r| r.defaults).unwrap_or_default();
    let mut env: BTreeMap<String, String> = d.env.into_iter().collect();
    env.extend(spec.env.clone());
    TemplateBuild {
        source,
        layers,
        size_bytes,
        env,
        cmd: spec.start.clone().or((!d.cmd.is_empty()).then_some(d.cmd)),
        cwd: spec.cwd.clone().or(d.cwd),
        user: spec.user.clone().or(d.user),
    }
}

impl Templates {
    /// Create the next version of `spec.name` and build it; `events` receives progress.
    /// Returns the version (`ready`), or [`TemplateError::BuildFailed`] (the version is kept,
    /// `failed`, for inspection).
    pub async fn create(
        &self,
        project: Option<String>,
        spec: TemplateSpec,
        events: Events,
    ) -> Result<Template, TemplateError> {
        let spec = core::spec(spec, self.manager.config().max_lifetime_s)?;
        let now = now_ms();
        let rec = TemplateRecord {
            name: spec.name.clone(),
            version: 0,
            project: project.clone(),
            status: TemplateStatus::Building,
            spec,
            build: None,
            error: None,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let rec = self
            .db(move |d| d.add_template_version(&rec, project.as_deref()))
            .await?;
        tracing::info!(message = "template build started", template = %rec.reference());
        let this = self.clone();
        let task = tokio::spawn(async move { this.finish(rec, events).await });
        task.await.map_err(|_| TemplateError::Task)?
    }

    async fn finish(
        &self,
        mut rec: TemplateRecord,
        events: Events,
    ) -> Result<Template, TemplateError> {
        let reference = rec.reference();
        send(
            &events,
            BuildEvent::Started {
                reference: reference.clone(),
            },
        )
        .await;
        let outcome = self.build(&rec, &events).await;
        rec.updated_at_ms = now_ms();
        match outcome {
            Ok(build) => {
                rec.status = TemplateStatus::Ready;
                rec.build = Some(build);
            }
            Err(message) => {
                rec.status = TemplateStatus::Failed;
                rec.error = Some(message);
            }
        }
        let saved = rec.clone();
        self.db(move |d| d.update_template(&saved)).await?;
        let api = to_api(&rec);
        match rec.status {
            TemplateStatus::Ready => {
                tracing::info!(message = "template built", template = %reference);
                send(
                    &events,
                    BuildEvent::Done {
                        template: Box::new(api.clone()),
                    },
                )
                .await;
                Ok(api)
            }
            _ => {
                let message = rec.error.unwrap_or_default();
                tracing::info!(message = "template build failed", template = %reference, error = %message);
                Err(TemplateError::BuildFailed { reference, message })
            }
        }
    }

    /// Everything between "building" and the outcome; a failure is the template's error text.
    async fn build(&self, rec: &TemplateRecord, events: &Events) -> Result<TemplateBuild, String> {
        let spec = &rec.spec;
        let from = spec.from.clone().unwrap_or_else(|| DEFAULT_TEMPLATE.into());
        let (source, image) = if from == DEFAULT_TEMPLATE {
            (DEFAULT_TEMPLATE.to_string(), None)
        } else {
            let resolver = ImageResolver::new(&self.state_dir);
            let r = resolver
                .resolve(Source::Image(from.clone()))
                .await
                .map_err(|e: ResolveError| format!("source image {from}: {e}"))?;
            (r.pinned.clone(), Some(r))
        };
        if spec.run.is_empty() {
            // Nothing to run: the version is its source with its defaults, and no layer.
            return Ok(defaults(spec, source, Vec::new(), 0, image));
        }
        let timeout = spec
            .build_timeout_s
            .unwrap_or(core::DEFAULT_BUILD_TIMEOUT_S);
        let max = self.manager.config().max_lifetime_s;
        let ttl = timeout.saturating_mul(spec.run.len() as u64 + 1);
        let req = CreateSandboxRequest {
            template: image.is_none().then(|| DEFAULT_TEMPLATE.to_string()),
            image: image
                .as_ref()
                .map(|r| r.pinned.trim_start_matches(IMAGE_PREFIX).to_string()),
            env: spec.env.clone(),
            labels: BTreeMap::from([(BUILD_LABEL.to_string(), rec.reference())]),
            // The template's limits bound its build too (a disk limit keeps a setup from
            // filling the host's disk).
            resources: spec.resources,
            timeout_s: Some(if max > 0 { ttl.min(max) } else { ttl }),
            network: spec.build_network.clone(),
            // Not the image's command: nothing but the setup commands runs in the build.
            cmd: image
                .as_ref()
                .filter(|r| !r.defaults.cmd.is_empty())
                .map(|_| vec!["/bin/sh".into(), "-c".into(), "exit 0".into()]),
            ..Default::default()
        };
        let sb = self
            .manager
            .create(req)
            .await
            .map_err(|e| format!("the build sandbox did not start: {}", chain(&e)))?;
        let result = self.run_and_capture(&sb.id, spec, timeout, events).await;
        if let Err(e) = self.manager.destroy(&sb.id).await {
            tracing::warn!(message = "could not destroy a template build sandbox", sandbox_id = %sb.id, error = %chain(&e));
        }
        let (layers, size_bytes) = result?;
        Ok(defaults(spec, source, layers, size_bytes, image))
    }

    async fn run_and_capture(
        &self,
        id: &str,
        spec: &TemplateSpec,
        timeout: u64,
        events: &Events,
    ) -> Result<(Vec<String>, u64), String> {
        let total = spec.run.len();
        for (index, command) in spec.run.iter().enumerate() {
            send(
                events,
                BuildEvent::Step {
                    index,
                    total,
                    command: command.clone(),
                },
            )
            .await;
            let req = ExecRequest {
                command: Some(command.clone()),
                timeout_s: Some(timeout),
                ..Default::default()
            };
            let r =
                self.manager.exec(id, req).await.map_err(|e| {
                    format!("setup command {} could not run: {}", index + 1, chain(&e))
                })?;
            let output = format!("{}{}", r.stdout, r.stderr);
            if !output.is_empty() {
                send(
                    events,
                    BuildEvent::Output {
                        data: output.clone(),
                    },
                )
                .await;
            }
            if r.exit_code != 0 || r.timed_out {
                let why = if r.timed_out {
                    format!("timed out after {timeout} s")
                } else {
                    format!("exited with code {}", r.exit_code)
                };
                return Err(format!(
                    "setup command {} of {total} ({command:?}) {why}; output:\n{}",
                    index + 1,
                    tail(&output, ERROR_OUTPUT_BYTES)
                ));
            }
        }
        send(events, BuildEvent::Capturing).await;
        self.manager
            .stop(id)
            .await
            .map_err(|e| format!("the build sandbox did not stop: {}", chain(&e)))?;
        let wl = self
            .manager
            .writable_layers(id)
            .await
            .map_err(|e| format!("cannot read the build sandbox's files: {}", chain(&e)))?;
        let store = ImageStore::open(&self.state_dir).map_err(|e| chain(&e))?;
        let store = Arc::new(store);
        let mut layers = Vec::new();
        let mut size = 0;
        for (i, upper) in wl.uppers.into_iter().enumerate() {
            let store = store.clone();
            let skip: &'static [&'static str] = if i == 0 { RUNTIME_FILES } else { &[] };
            let c = tokio::task::spawn_blocking(move || {
                prism_images::capture::capture_layer(&store, &upper, wl.uid_base, skip)
            })
            .await
            .map_err(|_| "the capture task failed".to_string())?
            .map_err(|e| format!("capturing the writable layer failed: {}", chain(&e)))?;
            size += c.size;
            layers.push(c.digest.hex().to_string());
        }
        Ok((layers, size))
    }
}

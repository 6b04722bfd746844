//! Templates (`/v1/templates`): build, list, inspect, remove.

use futures_util::stream::BoxStream;
use prism_types::templates::{BuildEvent, Template, TemplateList, TemplateSpec};
use reqwest::Method;

use crate::{Client, Result};

/// Progress of a template build, as it arrives; the last event is `done` or `error`.
pub type BuildEvents = BoxStream<'static, Result<BuildEvent>>;

impl Client {
    /// Build the next version of `spec.name`; returns when it is ready (a failed build is an
    /// API error `template_build_failed` carrying the command's output).
    pub async fn create_template(&self, spec: &TemplateSpec) -> Result<Template> {
        self.json(
            self.req(Method::POST, self.url(&["v1", "templates"]))
                .json(spec),
        )
        .await
    }

    /// [`Self::create_template`] with progress events.
    pub async fn create_template_stream(&self, spec: &TemplateSpec) -> Result<BuildEvents> {
        let req = self
            .req(Method::POST, self.url(&["v1", "templates"]))
            .header("accept", "application/x-ndjson")
            .json(spec);
        Ok(crate::ndjson::events(self.send(req).await?))
    }

    pub async fn list_templates(&self) -> Result<TemplateList> {
        self.json(self.req(Method::GET, self.url(&["v1", "templates"])))
            .await
    }

    /// `name:version`, or the newest version of `name`.
    pub async fn get_template(&self, reference: &str) -> Result<Template> {
        self.json(self.req(Method::GET, self.url(&["v1", "templates", reference])))
            .await
    }

    /// Remove `name:version` (or every version of `name`); returns what was removed.
    pub async fn remove_template(&self, reference: &str) -> Result<TemplateList> {
        self.json(self.req(Method::DELETE, self.url(&["v1", "templates", reference])))
            .await
    }
}

//! Code contexts and handler invocation (`/v1/sandboxes/{id}/code`, `/contexts`, `/invoke`).

use futures_util::stream::BoxStream;
use prism_types::code::{
    CodeContext, CodeEvent, CreateContextRequest, InvokeRequest, InvokeResult, RunCodeRequest,
};
use reqwest::Method;

use crate::{Client, Result};

/// The events of a run, as they arrive; the last is `end`.
pub type CodeEvents = BoxStream<'static, Result<CodeEvent>>;

impl Client {
    /// Runs code in a context (or the default context of `language`), streaming its events.
    pub async fn run_code(&self, id: &str, req: &RunCodeRequest) -> Result<CodeEvents> {
        let url = self.sandbox_url(id, &["code"]);
        let resp = self.send(self.req(Method::POST, url).json(req)).await?;
        Ok(crate::ndjson::events(resp))
    }

    pub async fn create_context(
        &self,
        id: &str,
        req: &CreateContextRequest,
    ) -> Result<CodeContext> {
        let url = self.sandbox_url(id, &["contexts"]);
        self.json(self.req(Method::POST, url).json(req)).await
    }

    pub async fn list_contexts(&self, id: &str) -> Result<Vec<CodeContext>> {
        let url = self.sandbox_url(id, &["contexts"]);
        self.json(self.req(Method::GET, url)).await
    }

    pub async fn delete_context(&self, id: &str, ctx: &str) -> Result<()> {
        let url = self.sandbox_url(id, &["contexts", ctx]);
        self.send(self.req(Method::DELETE, url)).await.map(drop)
    }

    /// A fresh driver for the context; its state is dropped.
    pub async fn restart_context(&self, id: &str, ctx: &str) -> Result<CodeContext> {
        let url = self.sandbox_url(id, &["contexts", ctx, "restart"]);
        self.json(self.req(Method::POST, url)).await
    }

    /// Interrupts the context's running code (SIGINT); the context survives.
    pub async fn interrupt_context(&self, id: &str, ctx: &str) -> Result<()> {
        let url = self.sandbox_url(id, &["contexts", ctx, "interrupt"]);
        self.send(self.req(Method::POST, url)).await.map(drop)
    }

    /// Calls `handler(event)` in a fresh context.
    pub async fn invoke(&self, id: &str, req: &InvokeRequest) -> Result<InvokeResult> {
        let url = self.sandbox_url(id, &["invoke"]);
        self.json(self.req(Method::POST, url).json(req)).await
    }
}

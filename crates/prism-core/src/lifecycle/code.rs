//! Code contexts and handler invocation in a running sandbox: the manager's side. The agent
//! does the work (`prism-agent`'s `code` module); here requests are checked, the sandbox is
//! resolved and kept alive, and a run's stream is handed back.

use futures_util::StreamExt;
use prism_types::code::{
    CodeContext, CreateContextRequest, InvokeRequest, InvokeResult, RunCodeRequest,
};

use super::agent::CodeEvents;
use super::manager::SandboxManager;
use super::{LifecycleError, validate};

/// The languages code contexts support.
pub const LANGUAGES: &[&str] = &[
    "python",
    "python3",
    "py",
    "javascript",
    "js",
    "node",
    "nodejs",
    "bash",
    "shell",
    "sh",
];

fn check_language(lang: &str) -> Result<(), LifecycleError> {
    if LANGUAGES.contains(&lang.to_ascii_lowercase().as_str()) {
        return Ok(());
    }
    Err(LifecycleError::InvalidRequest(format!(
        "unknown language {lang:?}: use python, javascript or bash"
    )))
}

fn check_timeout(t: Option<u64>) -> Result<(), LifecycleError> {
    match t {
        Some(s) if s > 86_400 => Err(LifecycleError::InvalidRequest(
            "timeout_s must be at most 86400".into(),
        )),
        _ => Ok(()),
    }
}

impl SandboxManager {
    /// Runs code in a context; the events end with `end`.
    pub async fn run_code(
        &self,
        id_or_name: &str,
        req: RunCodeRequest,
    ) -> Result<CodeEvents, LifecycleError> {
        match (&req.context_id, &req.language) {
            (None, None) => {
                return Err(LifecycleError::InvalidRequest(
                    "language or context_id is required".into(),
                ));
            }
            (_, Some(l)) => check_language(l)?,
            _ => {}
        }
        check_timeout(req.timeout_s)?;
        validate::env(&req.env)?;
        let (rec, _, agent) = self.running(id_or_name).await?;
        // A run without a context may create the language's default context: it gets the
        // sandbox's environment, as a process would.
        let context_env = match req.context_id {
            None => self.process_env(&rec).await,
            Some(_) => Default::default(),
        };
        let events = agent.run_code(req, context_env).await?;
        // Every event counts as activity for the idle timeout.
        let this = self.clone();
        let id = rec.id;
        Ok(events.inspect(move |_| this.touch(&id)).boxed())
    }

    pub async fn create_context(
        &self,
        id_or_name: &str,
        req: CreateContextRequest,
    ) -> Result<CodeContext, LifecycleError> {
        check_language(&req.language)?;
        validate::env(&req.env)?;
        let (rec, _, agent) = self.running(id_or_name).await?;
        // The sandbox's environment (variables, secrets) under the context's own.
        let mut env = self.process_env(&rec).await;
        env.extend(req.env);
        Ok(agent
            .create_context(CreateContextRequest { env, ..req })
            .await?)
    }

    pub async fn list_contexts(
        &self,
        id_or_name: &str,
    ) -> Result<Vec<CodeContext>, LifecycleError> {
        let (_, _, agent) = self.running(id_or_name).await?;
        Ok(agent.list_contexts().await?)
    }

    pub async fn delete_context(&self, id_or_name: &str, ctx: &str) -> Result<(), LifecycleError> {
        let (_, _, agent) = self.running(id_or_name).await?;
        Ok(agent.delete_context(ctx).await?)
    }

    pub async fn restart_context(
        &self,
        id_or_name: &str,
        ctx: &str,
    ) -> Result<CodeContext, LifecycleError> {
        let (_, _, agent) = self.running(id_or_name).await?;
        Ok(agent.restart_context(ctx).await?)
    }

    pub async fn interrupt_context(
        &self,
        id_or_name: &str,
        ctx: &str,
    ) -> Result<(), LifecycleError> {
        let (_, _, agent) = self.running(id_or_name).await?;
        Ok(agent.interrupt_context(ctx).await?)
    }

    /// Calls `handler(event)` in a fresh context and returns its JSON result.
    pub async fn invoke(
        &self,
        id_or_name: &str,
        req: InvokeRequest,
    ) -> Result<InvokeResult, LifecycleError> {
        check_language(&req.language)?;
        check_timeout(req.timeout_s)?;
        if req.code.is_some() == req.path.is_some() {
            return Err(LifecycleError::InvalidRequest(
                "exactly one of code and path is required".into(),
            ));
        }
        let (rec, _, agent) = self.running(id_or_name).await?;
        let env = self.process_env(&rec).await;
        Ok(agent.invoke(req, env).await?)
    }
}

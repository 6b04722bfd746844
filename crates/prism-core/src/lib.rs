//! prism-core: the sandbox lifecycle and the `Runtime` trait with its backends.
#![forbid(unsafe_code)]

pub mod lifecycle;
pub mod namespace;
pub mod runtime;
pub mod security;
pub mod template;

pub use runtime::{
    LayerMount, Limits, RootfsSpec, Runtime, RuntimeError, SandboxHandle, SandboxSpec,
    SandboxStats, WritableLayers,
};

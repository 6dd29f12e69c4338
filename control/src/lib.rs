//! The control plane's runtime and what runs on it: one current-thread tokio runtime that the
//! main thread runs ([`ControlRuntime`]), with what its tasks share ([`Plane`]),
//! the bounded HTTP/1.1 server behind every HTTP port ringlb serves ([`http`]: the admin API,
//! node mode's health servers), and the registry of what keeps ringlb from being ready
//! ([`Readiness`], which `/readyz` reports), and the active health checks of backends
//! ([`checks`]) and the readmission of backends that outlier detection ejected
//! ([`ejections`]), and the republishing of services whose backends ramp up after they
//! came back ([`slow_start`]).
//!
//! Everything here runs on, or hands work to, that one thread (ringlb's main thread); nothing
//! may block it. This
//! crate never touches a data-plane socket, and knows neither the admin API's routes nor
//! Kubernetes: its callers bring their handlers.

pub mod checks;
pub mod ejections;
pub mod http;
mod readiness;
mod runtime;
pub mod slow_start;

pub use readiness::Readiness;
pub use runtime::{ControlRuntime, Plane};

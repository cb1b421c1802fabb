//! The opsbro expression evaluator.
//!
//! Expressions from opsbro packs and the opsbro README run unchanged: [`front`] rewrites their
//! Python flavour and placeholders into rhai, and [`Evaluator`] runs them on a rhai engine with
//! limits (operations, call depth, expression depth, string/array/map sizes), with the function
//! library of the original registered ([`functions`]). An error or a limit hit is a value
//! ([`EvalError`] with the position and the offending text), never a crash.
//!
//! No IO happens here except inside the registered functions that exist to do it (file checks,
//! `check_tcp`, `host_to_ip`, `ip_to_host`), each bounded. Facts only the agent knows (groups,
//! members, zones, hosting driver, compliance states, the KV store) come through [`EvalContext`].

#![forbid(unsafe_code)]

mod context;
mod convert;
mod engine;
pub mod front;
pub mod functions;
mod signature;

pub use context::{EvalContext, NoContext};
pub use convert::to_json;
pub use engine::{ErrorKind, EvalError, Evaluator, truthy};
pub use front::Resolver;
pub use signature::{FunctionDoc, Param};

//! Compliance: `compliance:` objects keep the host the way the packs say (the original's
//! configuration-management half).

pub mod backends;
pub mod types;

pub use types::{Info, InfoKind, Mode, Outcome, RuleState};
mod driver;

pub use driver::{ComplianceHandle, ComplianceSetup, Launches, STEP_TIMEOUT, run};

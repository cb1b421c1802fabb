//! The vocabulary of compliance: rule states (the original's), modes, the lines a rule reports.

use std::fmt;

/// State of a rule (and of a compliance object: the worst of its rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RuleState {
    /// Not run yet.
    #[serde(rename = "PENDING")]
    Pending,
    /// Running now.
    #[serde(rename = "RUNNING")]
    Running,
    /// The host is as the rule says.
    #[serde(rename = "COMPLIANT")]
    Compliant,
    /// The host was not, and the rule fixed it (enforcing mode).
    #[serde(rename = "FIXED")]
    Fixed,
    /// The host is not as the rule says (audit), or the fix failed.
    #[serde(rename = "ERROR")]
    Error,
    /// Not run because an earlier rule of the object failed, or no environment matched.
    #[serde(rename = "UNKNOWN")]
    Unknown,
    /// `verify_if` is false on this host.
    #[serde(rename = "NOT-ELIGIBLE")]
    NotEligible,
}

impl RuleState {
    /// The word the API and CLI show (`NOT-ELIGIBLE`...).
    pub fn as_str(self) -> &'static str {
        match self {
            RuleState::Pending => "PENDING",
            RuleState::Running => "RUNNING",
            RuleState::Compliant => "COMPLIANT",
            RuleState::Fixed => "FIXED",
            RuleState::Error => "ERROR",
            RuleState::Unknown => "UNKNOWN",
            RuleState::NotEligible => "NOT-ELIGIBLE",
        }
    }

    /// Parse the word back (saved states).
    pub fn parse(text: &str) -> Option<RuleState> {
        Some(match text {
            "PENDING" => RuleState::Pending,
            "RUNNING" => RuleState::Running,
            "COMPLIANT" => RuleState::Compliant,
            "FIXED" => RuleState::Fixed,
            "ERROR" => RuleState::Error,
            "UNKNOWN" => RuleState::Unknown,
            "NOT-ELIGIBLE" => RuleState::NotEligible,
            _ => return None,
        })
    }

    /// The original's order for an object's state: the worst of its rules is the first of
    /// NOT-ELIGIBLE < ERROR < FIXED < COMPLIANT < UNKNOWN < PENDING that one of them has
    /// (RUNNING counts as PENDING).
    fn rank(self) -> u8 {
        match self {
            RuleState::NotEligible => 0,
            RuleState::Error => 1,
            RuleState::Fixed => 2,
            RuleState::Compliant => 3,
            RuleState::Unknown => 4,
            RuleState::Pending | RuleState::Running => 5,
        }
    }

    /// The state of an object whose rules are in `states` (PENDING when it has none).
    pub fn worst(states: impl IntoIterator<Item = RuleState>) -> RuleState {
        states
            .into_iter()
            .min_by_key(|s| s.rank())
            .unwrap_or(RuleState::Pending)
    }
}

impl fmt::Display for RuleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `audit` never changes the host; `enforcing` fixes what differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Report only (the default).
    #[default]
    Audit,
    /// Fix.
    Enforcing,
}

impl Mode {
    /// `audit` / `enforcing`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Audit => "audit",
            Mode::Enforcing => "enforcing",
        }
    }
}

/// What one line a rule reports is about (the original's `SUCCESS/ERROR/FIX/COMPLIANT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum InfoKind {
    /// Something checked out.
    #[serde(rename = "COMPLIANT")]
    Compliant,
    /// Something was changed.
    #[serde(rename = "FIX")]
    Fix,
    /// Something is wrong or failed.
    #[serde(rename = "ERROR")]
    Error,
    /// A step that worked (a post command).
    #[serde(rename = "SUCCESS")]
    Success,
}

/// One line of a rule's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// What it is about.
    pub kind: InfoKind,
    /// The text (`The file /etc/passwd owner (news) is not what expected: root`).
    pub text: String,
}

impl Info {
    /// A `COMPLIANT` line.
    pub fn compliant(text: impl Into<String>) -> Info {
        Info {
            kind: InfoKind::Compliant,
            text: text.into(),
        }
    }
    /// A `FIX` line.
    pub fn fix(text: impl Into<String>) -> Info {
        Info {
            kind: InfoKind::Fix,
            text: text.into(),
        }
    }
    /// An `ERROR` line.
    pub fn error(text: impl Into<String>) -> Info {
        Info {
            kind: InfoKind::Error,
            text: text.into(),
        }
    }
    /// A `SUCCESS` line.
    pub fn success(text: impl Into<String>) -> Info {
        Info {
            kind: InfoKind::Success,
            text: text.into(),
        }
    }
}

/// What a backend says after one run of a rule: `Compliant`, `Fixed` or `Error`, and its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `Compliant`, `Fixed` or `Error`.
    pub state: RuleState,
    /// What it found and did.
    pub infos: Vec<Info>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_state_follows_the_original_order() {
        use RuleState::*;
        assert_eq!(RuleState::worst([]), Pending);
        assert_eq!(RuleState::worst([Compliant, Fixed]), Fixed);
        assert_eq!(RuleState::worst([Compliant, Error, Unknown]), Error);
        assert_eq!(RuleState::worst([Compliant, Unknown]), Compliant);
        assert_eq!(RuleState::worst([NotEligible, Error]), NotEligible);
        assert_eq!(RuleState::worst([Pending, Unknown]), Unknown);
        for s in [
            Pending,
            Running,
            Compliant,
            Fixed,
            Error,
            Unknown,
            NotEligible,
        ] {
            assert_eq!(RuleState::parse(s.as_str()), Some(s));
        }
    }
}

//! Check states and flap damping.

use std::fmt;

/// The state of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CheckState {
    /// Everything is fine.
    Ok,
    /// Worth a look.
    Warning,
    /// Broken.
    Critical,
    /// The check itself could not tell (error, timeout, plugin exit 3+).
    Unknown,
    /// Not run yet (or not confirmed yet).
    Pending,
}

impl CheckState {
    /// Every state, in wire order.
    pub const ALL: [CheckState; 5] = [
        CheckState::Ok,
        CheckState::Warning,
        CheckState::Critical,
        CheckState::Unknown,
        CheckState::Pending,
    ];

    /// Lowercase name used in the API, the CLI, templates and `severities`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Ok => "ok",
            CheckState::Warning => "warning",
            CheckState::Critical => "critical",
            CheckState::Unknown => "unknown",
            CheckState::Pending => "pending",
        }
    }

    /// Parse a state name (any case).
    pub fn parse(text: &str) -> Option<CheckState> {
        let lower = text.trim().to_ascii_lowercase();
        CheckState::ALL.into_iter().find(|s| s.as_str() == lower)
    }

    /// The state a nagios plugin's exit code means: 0 ok, 1 warning, 2 critical, anything else
    /// (3, a signal, a missing binary) unknown.
    pub fn from_exit_code(code: Option<i32>) -> CheckState {
        match code {
            Some(0) => CheckState::Ok,
            Some(1) => CheckState::Warning,
            Some(2) => CheckState::Critical,
            _ => CheckState::Unknown,
        }
    }

    /// opsbro's `state_id`: 0 ok, 1 warning, 2 critical, 3 unknown and pending.
    pub fn state_id(self) -> u8 {
        match self {
            CheckState::Ok => 0,
            CheckState::Warning => 1,
            CheckState::Critical => 2,
            CheckState::Unknown | CheckState::Pending => 3,
        }
    }

    /// Byte used on the gossip wire (distinguishes pending from unknown).
    pub fn to_wire(self) -> u8 {
        match self {
            CheckState::Ok => 0,
            CheckState::Warning => 1,
            CheckState::Critical => 2,
            CheckState::Unknown => 3,
            CheckState::Pending => 4,
        }
    }

    /// Decode [`CheckState::to_wire`]; unknown bytes read as unknown.
    pub fn from_wire(b: u8) -> CheckState {
        match b {
            0 => CheckState::Ok,
            1 => CheckState::Warning,
            2 => CheckState::Critical,
            4 => CheckState::Pending,
            _ => CheckState::Unknown,
        }
    }

    /// Warning, critical or unknown.
    pub fn is_problem(self) -> bool {
        matches!(
            self,
            CheckState::Warning | CheckState::Critical | CheckState::Unknown
        )
    }
}

impl fmt::Display for CheckState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Flap damping: how many results in a row confirm a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damping {
    /// Problem results in a row before an ok (or pending) check turns warning/critical/unknown.
    pub failures_before_critical: u32,
    /// Ok results in a row before a check with a problem turns ok.
    pub successes_before_ok: u32,
}

impl Default for Damping {
    fn default() -> Self {
        Damping {
            failures_before_critical: 1,
            successes_before_ok: 1,
        }
    }
}

/// A confirmed change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// Before.
    pub old: CheckState,
    /// After.
    pub new: CheckState,
}

/// The confirmed state of one check, fed with raw results.
#[derive(Debug, Clone)]
pub struct Tracker {
    damping: Damping,
    state: CheckState,
    failures: u32,
    successes: u32,
}

impl Tracker {
    /// A check that has not run yet.
    pub fn new(damping: Damping) -> Tracker {
        Tracker::restore(damping, CheckState::Pending)
    }

    /// A check whose confirmed state was saved before a restart.
    pub fn restore(damping: Damping, state: CheckState) -> Tracker {
        Tracker {
            damping: Damping {
                failures_before_critical: damping.failures_before_critical.max(1),
                successes_before_ok: damping.successes_before_ok.max(1),
            },
            state,
            failures: 0,
            successes: 0,
        }
    }

    /// The confirmed state.
    pub fn state(&self) -> CheckState {
        self.state
    }

    /// Results in a row that disagree with the confirmed state and count toward a change
    /// (0 when the last result agreed).
    pub fn attempts(&self) -> u32 {
        if self.state.is_problem() {
            self.successes
        } else {
            self.failures
        }
    }

    /// How many disagreeing results in a row a change needs from the current state.
    pub fn attempts_needed(&self) -> u32 {
        if self.state.is_problem() {
            self.damping.successes_before_ok
        } else {
            self.damping.failures_before_critical
        }
    }

    /// Record one raw result; returns the change when it confirms one.
    ///
    /// From ok (or pending) a problem needs `failures_before_critical` problem results in a row;
    /// from a problem, ok needs `successes_before_ok` ok results in a row; between problems
    /// (warning → critical) the newest result applies at once, and the first ok result of a
    /// pending check confirms it.
    pub fn record(&mut self, result: CheckState) -> Option<Change> {
        let old = self.state;
        if result.is_problem() {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if old.is_problem() || self.failures >= self.damping.failures_before_critical {
                self.state = result;
            }
        } else if result == CheckState::Ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !old.is_problem() || self.successes >= self.damping.successes_before_ok {
                self.state = CheckState::Ok;
            }
        }
        if self.state == old {
            return None;
        }
        // A confirmed change starts counting afresh.
        self.failures = 0;
        self.successes = 0;
        Some(Change {
            old,
            new: self.state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::CheckState::*;
    use super::*;

    fn run(damping: Damping, results: &[CheckState]) -> Vec<(CheckState, CheckState)> {
        let mut t = Tracker::new(damping);
        results
            .iter()
            .filter_map(|r| t.record(*r).map(|c| (c.old, c.new)))
            .collect()
    }

    #[test]
    fn without_damping_every_different_result_is_a_change() {
        let changes = run(Damping::default(), &[Ok, Ok, Critical, Critical, Ok]);
        assert_eq!(changes, vec![(Pending, Ok), (Ok, Critical), (Critical, Ok)]);
    }

    #[test]
    fn a_flapping_check_needs_failures_in_a_row() {
        let d = Damping {
            failures_before_critical: 3,
            successes_before_ok: 1,
        };
        let changes = run(
            d,
            &[
                Ok, Critical, Ok, Critical, Critical, Ok, Critical, Critical, Critical, Critical,
            ],
        );
        assert_eq!(changes, vec![(Pending, Ok), (Ok, Critical)]);
    }

    #[test]
    fn recovery_needs_successes_in_a_row() {
        let d = Damping {
            failures_before_critical: 1,
            successes_before_ok: 2,
        };
        let changes = run(d, &[Ok, Critical, Ok, Critical, Ok, Ok]);
        assert_eq!(changes, vec![(Pending, Ok), (Ok, Critical), (Critical, Ok)]);
    }

    #[test]
    fn problems_change_between_themselves_at_once() {
        let d = Damping {
            failures_before_critical: 3,
            successes_before_ok: 3,
        };
        let changes = run(d, &[Warning, Warning, Warning, Critical, Unknown]);
        assert_eq!(
            changes,
            vec![(Pending, Warning), (Warning, Critical), (Critical, Unknown)]
        );
    }

    #[test]
    fn attempts_count_toward_the_next_change() {
        let mut t = Tracker::restore(
            Damping {
                failures_before_critical: 3,
                successes_before_ok: 1,
            },
            Ok,
        );
        t.record(Critical);
        t.record(Critical);
        assert_eq!((t.state(), t.attempts(), t.attempts_needed()), (Ok, 2, 3));
        t.record(Ok);
        assert_eq!(t.attempts(), 0);
    }

    #[test]
    fn exit_codes_and_names() {
        assert_eq!(CheckState::from_exit_code(Some(0)), Ok);
        assert_eq!(CheckState::from_exit_code(Some(1)), Warning);
        assert_eq!(CheckState::from_exit_code(Some(2)), Critical);
        assert_eq!(CheckState::from_exit_code(Some(3)), Unknown);
        assert_eq!(CheckState::from_exit_code(Some(127)), Unknown);
        assert_eq!(CheckState::from_exit_code(None), Unknown);
        for s in CheckState::ALL {
            assert_eq!(CheckState::parse(&s.as_str().to_uppercase()), Some(s));
            assert_eq!(CheckState::from_wire(s.to_wire()), s);
        }
        assert_eq!(Pending.state_id(), 3);
    }
}

//! One rotation as the history holds it: domain types (times as [`OffsetDateTime`]), turned into
//! the on-disk line ([`super::line`]) and the control protocol's record ([`Record::to_wire`]) only
//! at those edges.

use time::OffsetDateTime;

use crate::control::proto;
use crate::timefmt::rfc3339;

/// One rotation as the activity log tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The rotation id.
    pub id: String,
    /// The node it ran on.
    pub node: String,
    /// The certificates it renewed.
    pub certificates: Vec<String>,
    /// Where it stands.
    pub state: State,
    /// When it started.
    pub started_at: OffsetDateTime,
    /// When it ended; `None` while it runs.
    pub finished_at: Option<OffsetDateTime>,
    /// Why it started (e.g. "expires in 29d", "certrotd rotate"), or why it failed.
    pub reason: Option<String>,
    /// When the first component restart began.
    pub disruptive_from: Option<OffsetDateTime>,
    /// When the last component was verified serving the new certificate.
    pub disruptive_to: Option<OffsetDateTime>,
    /// The lease's fencing token while it ran, so records from competing nodes can be ordered.
    pub fencing_token: Option<u64>,
    /// A cluster recovery: run WITHOUT the lease (no fencing token) because this node's etcd
    /// certificates had expired, so the cluster could not be up.
    pub recovery: bool,
    /// Components that took the new certificates by a hot reload instead of a restart.
    pub reloaded: Vec<String>,
    /// Components that were restarted.
    pub restarted: Vec<String>,
}

impl Record {
    /// A rotation of `certificates` on `node` that has just started at `now`, with nothing else
    /// known yet.
    pub fn initiated(
        id: &str,
        node: &str,
        certificates: Vec<String>,
        reason: Option<String>,
        now: OffsetDateTime,
    ) -> Record {
        Record {
            id: id.to_owned(),
            node: node.to_owned(),
            certificates,
            state: State::Initiated,
            started_at: now,
            finished_at: None,
            reason,
            disruptive_from: None,
            disruptive_to: None,
            fencing_token: None,
            recovery: false,
            reloaded: Vec::new(),
            restarted: Vec::new(),
        }
    }
}

/// Where a rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Started and not yet finished.
    Initiated,
    /// Every component serves the new certificates.
    Success,
    /// Rolled back, or stopped; `reason` says why.
    Failed,
}

impl State {
    /// The word history files and the protocol carry.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Initiated => "Initiated",
            State::Success => "Success",
            State::Failed => "Failed",
        }
    }

    /// The state a word names, if any.
    pub fn from_word(word: &str) -> Option<State> {
        [State::Initiated, State::Success, State::Failed]
            .into_iter()
            .find(|s| s.as_str() == word)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<State> for proto::HistoryState {
    fn from(s: State) -> Self {
        match s {
            State::Initiated => proto::HistoryState::Initiated,
            State::Success => proto::HistoryState::Success,
            State::Failed => proto::HistoryState::Failed,
        }
    }
}

impl Record {
    /// The record as `certrotd history` receives it.
    pub fn to_wire(&self) -> proto::HistoryRecord {
        proto::HistoryRecord {
            id: self.id.clone(),
            node: self.node.clone(),
            certificates: self.certificates.clone(),
            state: self.state.into(),
            started_at: rfc3339(self.started_at),
            finished_at: self.finished_at.map(rfc3339),
            reason: self.reason.clone(),
            disruptive_from: self.disruptive_from.map(rfc3339),
            disruptive_to: self.disruptive_to.map(rfc3339),
            fencing_token: self.fencing_token,
            recovery: self.recovery,
            reloaded: self.reloaded.clone(),
            restarted: self.restarted.clone(),
        }
    }
}

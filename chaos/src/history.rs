//! The history of a run: every operation with the time it was invoked and the time it
//! completed (milliseconds since the run started) and what it returned, one JSON object per line
//! in `DIR/history.jsonl`. The checker ([`crate::checker`]) reads nothing else, so a history
//! from an old run can be checked again (`scoregrid chaos check DIR`).

use serde::{Deserialize, Serialize};

/// One answer of `/v1/recommend` as a client saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Page {
    /// The HTTP status; 0 when no response came (transport error or timeout).
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// (product, score) in the order of the answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<(u64, f32)>,
    #[serde(default)]
    pub segments: u64,
    #[serde(default)]
    pub answered: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub degraded: Vec<String>,
    /// The code and message of a JSON error (`code: message`), or what went wrong on the way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl Page {
    /// A 200 whose coverage is whole and that names no reason to doubt it.
    pub fn is_full(&self) -> bool {
        self.is_complete() && self.degraded.is_empty()
    }

    /// A 200 from every segment (it may still say `stale_map`: the router's map may be out
    /// of date, which does not make the ranking of the version it names less exact).
    pub fn is_complete(&self) -> bool {
        self.status == 200 && self.answered == self.segments
    }
}

/// What an operation was and what came back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// One page of recommendations (no cursor).
    Recommend {
        router: String,
        customer: u64,
        container: u64,
        limit: u32,
        page: Page,
    },
    /// A whole grid walked page by page through its cursors.
    Walk {
        router: String,
        customer: u64,
        container: u64,
        limit: u32,
        pages: Vec<Page>,
    },
    /// A router's `/v1/cluster`, polled.
    Observe {
        router: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        active_version: Option<String>,
        #[serde(default)]
        stale: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A fault, from the moment it was applied to the moment it was healed.
    Fault { kind: String, detail: String },
    /// An operator command (`model activate V`, `cluster maintenance ...`): its exit code,
    /// `None` when it timed out.
    Operator {
        command: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        code: Option<i32>,
        message: String,
        /// Asked through a side of a partition without quorum.
        #[serde(default)]
        minority: bool,
    },
    /// A process that exited without being killed by the nemesis.
    Crash { process: String, status: String },
    /// The cluster after the final heal: when every node agreed (or the time it gave up).
    Converge {
        converged: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        active_version: Option<String>,
        detail: String,
    },
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub process: String,
    pub invoke_ms: u64,
    pub complete_ms: u64,
    #[serde(flatten)]
    pub op: Op,
}

/// Reads a history file.
///
/// # Errors
/// The file cannot be read, or line N is not an event (named in the message).
pub fn read(path: &std::path::Path) -> Result<Vec<Event>, crate::ChaosError> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::ChaosError::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| {
                crate::ChaosError::Invalid(format!("{}:{}: {e}", path.display(), i + 1))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_survives_its_line() {
        let event = Event {
            process: "reader-r1-0".into(),
            invoke_ms: 5,
            complete_ms: 9,
            op: Op::Recommend {
                router: "r1".into(),
                customer: 7,
                container: 3,
                limit: 2,
                page: Page {
                    status: 200,
                    version: Some("v1".into()),
                    items: vec![(1, 0.5), (2, 0.25)],
                    segments: 1,
                    answered: 1,
                    ..Page::default()
                },
            },
        };
        let line = serde_json::to_string(&event).unwrap();
        assert!(line.contains(r#""op":"recommend""#), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), event);
    }
}

//! What a person watching a load sees: on a terminal, two bars (partition copies, and bytes
//! with their rate and time left); otherwise one log line each time another tenth of the bytes
//! is staged, so that a job's log shows progress without a bar's control characters.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// Bars when stderr is a terminal, else log lines.
    Auto,
    /// Log lines only.
    Lines,
    /// Nothing (tests, embedded use).
    Quiet,
}

pub(crate) struct Progress {
    bars: Option<(ProgressBar, ProgressBar)>,
    lines: bool,
    state: Mutex<Tally>,
    started: Instant,
}

#[derive(Default)]
struct Tally {
    copies: u64,
    bytes: u64,
    copies_total: u64,
    bytes_total: u64,
    /// The last tenth reported by a log line.
    tenth: u64,
}

impl Progress {
    pub(crate) fn new(mode: ProgressMode) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bars = (mode == ProgressMode::Auto && terminal).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let copies = multi.add(ProgressBar::new(0));
            copies.set_style(
                ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len} copies")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            copies.set_prefix("partitions");
            let bytes = multi.add(ProgressBar::new(0));
            bytes.set_style(
                ProgressStyle::with_template(
                    "{prefix:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bytes.set_prefix("bytes");
            (copies, bytes)
        });
        Self {
            lines: mode != ProgressMode::Quiet && bars.is_none(),
            bars,
            state: Mutex::new(Tally::default()),
            started: Instant::now(),
        }
    }

    /// More work was planned (a round of staging).
    pub(crate) fn plan(&self, copies: u64, bytes: u64) {
        let Ok(mut t) = self.state.lock() else {
            return;
        };
        t.copies_total += copies;
        t.bytes_total += bytes;
        if let Some((c, b)) = &self.bars {
            c.set_length(t.copies_total);
            b.set_length(t.bytes_total);
        }
    }

    pub(crate) fn bytes(&self, n: u64) {
        let Ok(mut t) = self.state.lock() else {
            return;
        };
        t.bytes += n;
        if let Some((_, b)) = &self.bars {
            b.set_position(t.bytes);
        }
        if self.lines && t.bytes_total > 0 {
            let tenth = t.bytes.saturating_mul(10) / t.bytes_total;
            if tenth > t.tenth {
                t.tenth = tenth;
                let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
                tracing::info!(
                    percent = tenth * 10,
                    copies = t.copies,
                    copies_total = t.copies_total,
                    mib = t.bytes / (1 << 20),
                    mib_total = t.bytes_total / (1 << 20),
                    mib_per_s = format!("{:.1}", t.bytes as f64 / 1048576.0 / seconds),
                    "staging"
                );
            }
        }
    }

    pub(crate) fn copy_done(&self) {
        let Ok(mut t) = self.state.lock() else {
            return;
        };
        t.copies += 1;
        if let Some((c, _)) = &self.bars {
            c.set_position(t.copies);
        }
    }

    pub(crate) fn finish(&self) {
        if let Some((c, b)) = &self.bars {
            c.finish_and_clear();
            b.finish_and_clear();
        }
    }
}

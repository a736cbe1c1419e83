//! The live view: progress on stderr while a run goes on, and the [`Narrator`] that prints a
//! caller's lines (a story's narration) between its redraws.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::TimelinePoint;

/// Prints a caller's lines on stderr between the live view's redraws, so the view neither
/// overwrites them nor is torn by them. Give a clone to the run's spec
/// (`LoadSpecBuilder::narrator`) and [`say`](Self::say) through the other.
#[derive(Debug, Clone, Default)]
pub struct Narrator {
    /// Set when a line was printed under the live view, so its next redraw starts below the
    /// line instead of over it.
    printed: Arc<AtomicBool>,
}

impl Narrator {
    /// Prints `line` on stderr.
    pub fn say(&self, line: &str) {
        eprintln!("{line}");
        self.printed.store(true, Ordering::Relaxed);
    }

    /// Whether a line was printed since the last call.
    fn take_printed(&self) -> bool {
        self.printed.swap(false, Ordering::Relaxed)
    }
}

/// Progress on stderr: on a terminal, a block redrawn in place (the latest second, and a
/// sparkline of OK/s over the last minute); otherwise one plain line per interval.
pub(crate) struct LiveView {
    pub(crate) tty: bool,
    narrator: Option<Narrator>,
    drawn: bool,
    /// Lines the last drawing took.
    lines: usize,
    ok_history: std::collections::VecDeque<f64>,
}

impl LiveView {
    const HISTORY: usize = 60;

    pub(crate) fn new(narrator: Option<Narrator>) -> Self {
        use std::io::IsTerminal;
        Self {
            tty: std::io::stderr().is_terminal(),
            narrator,
            drawn: false,
            lines: 0,
            ok_history: Default::default(),
        }
    }

    pub(crate) fn show(&mut self, p: &TimelinePoint) {
        if !self.tty {
            eprintln!("{}", p.line());
            return;
        }
        if self.ok_history.len() == Self::HISTORY {
            self.ok_history.pop_front();
        }
        self.ok_history.push_back(p.ok);
        let max = self.ok_history.iter().copied().fold(1.0, f64::max);
        const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
        let spark: String = self
            .ok_history
            .iter()
            .map(|v| BARS[((v / max) * 7.0).round() as usize])
            .collect();
        let narrated = self.narrator.as_ref().is_some_and(Narrator::take_printed);
        let hops = p.hop_bars();
        if self.drawn && !narrated {
            // Up over the last drawing, clear to the end of the screen.
            eprint!("\x1b[{}F\x1b[J", self.lines);
        }
        eprintln!("{}", TimelinePoint::HEADER);
        eprintln!("{}", p.line());
        eprintln!(
            "ok/s (last {} intervals, max {max:.0}) {spark}",
            self.ok_history.len()
        );
        self.lines = 3;
        if let Some(hops) = hops {
            eprintln!("{hops}");
            self.lines += 1;
        }
        self.drawn = true;
    }
}

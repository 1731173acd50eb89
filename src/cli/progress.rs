//! The pipeline's [`Reporter`] for people: a bar per active dataset and a
//! total on a terminal (indicatif), plain progress lines otherwise (CI logs,
//! files), at most one per dataset every few seconds.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::pipeline::{DatasetSummary, Reporter};
use crate::store::QuestionStatus;

const PLAIN_EVERY: Duration = Duration::from_secs(10);

pub fn reporter() -> Box<dyn Reporter> {
    if std::io::stderr().is_terminal() {
        Box::new(Bars::new())
    } else {
        Box::new(Lines::default())
    }
}

struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    fn new() -> Bars {
        let multi = MultiProgress::new();
        let total = multi.add(ProgressBar::new(0));
        total.set_style(
            ProgressStyle::with_template(
                "{prefix:>16} [{bar:30}] {pos}/{len} questions {elapsed_precise} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        total.set_prefix("total");
        // Log lines on stderr are written above the bars from now on.
        crate::logs::draw_above(Some(multi.clone()));
        Bars {
            multi,
            total,
            bars: Mutex::new(HashMap::new()),
        }
    }
}

impl Reporter for Bars {
    fn dataset_started(&self, slug: &str, questions: usize, already_done: usize) {
        let bar = self
            .multi
            .insert_before(&self.total, ProgressBar::new(questions as u64));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>16} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(slug.to_string());
        bar.set_position(already_done as u64);
        self.total.inc_length(questions as u64);
        self.total.inc(already_done as u64);
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(slug.to_string(), bar);
        }
    }

    fn question_finished(&self, slug: &str, status: QuestionStatus) {
        if let Ok(bars) = self.bars.lock() {
            if let Some(bar) = bars.get(slug) {
                bar.inc(1);
                if status != QuestionStatus::Verified {
                    bar.set_message(format!("last: {status}"));
                }
            }
        }
        self.total.inc(1);
    }

    fn dataset_finished(&self, summary: &DatasetSummary) {
        let bar = self
            .bars
            .lock()
            .ok()
            .and_then(|mut b| b.remove(&summary.dataset));
        let line = super::run::summary_line(summary);
        match bar {
            Some(bar) => bar.finish_with_message(line),
            None => {
                let _ = self
                    .multi
                    .println(format!("{:>16} {line}", summary.dataset));
            }
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        crate::logs::draw_above(None);
    }
}

#[derive(Default)]
struct Lines {
    state: Mutex<HashMap<String, (usize, usize, Instant)>>,
}

impl Reporter for Lines {
    fn dataset_started(&self, slug: &str, questions: usize, already_done: usize) {
        eprintln!("csv-agent: {slug}: {questions} questions ({already_done} already done)");
        if let Ok(mut s) = self.state.lock() {
            s.insert(slug.to_string(), (already_done, questions, Instant::now()));
        }
    }

    fn question_finished(&self, slug: &str, _status: QuestionStatus) {
        if let Ok(mut s) = self.state.lock() {
            if let Some((done, total, last)) = s.get_mut(slug) {
                *done += 1;
                if last.elapsed() >= PLAIN_EVERY {
                    *last = Instant::now();
                    eprintln!("csv-agent: {slug}: {done}/{total} questions");
                }
            }
        }
    }

    fn dataset_finished(&self, summary: &DatasetSummary) {
        eprintln!(
            "csv-agent: {}: {}",
            summary.dataset,
            super::run::summary_line(summary)
        );
    }
}

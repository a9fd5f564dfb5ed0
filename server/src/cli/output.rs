//! What `slipway exec` prints: live log lines prefixed by stage, a spinner per running
//! stage on a terminal (plain lines otherwise, so CI logs and pipes stay readable), and
//! a summary table at the end.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use console::Style;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use runner::{StageEvent, Status};

use crate::cli::exec::engine::{ExecEvent, StageReport, StageResult};
use crate::cli::stdio::{StdoutError, outln};
use crate::store::RunStatus;

const PALETTE: [fn(Style) -> Style; 6] = [
    Style::cyan,
    Style::magenta,
    Style::green,
    Style::yellow,
    Style::blue,
    Style::red,
];

pub struct Output {
    colour: bool,
    width: usize,
    styles: HashMap<String, Style>,
    /// Present only when stderr is a terminal.
    bars: Option<MultiProgress>,
    spinners: HashMap<String, ProgressBar>,
    /// The first failed write to stdout: nothing more is printed, and the command
    /// reports it when the run is over (its steps are not left half-done).
    broken: Option<StdoutError>,
}

impl Output {
    pub fn new(stage_ids: &[String], colour: bool) -> Self {
        let styles = stage_ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let style = PALETTE[i % PALETTE.len()](Style::new()).force_styling(colour);
                (id.clone(), style)
            })
            .collect();
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Output {
            colour,
            width: stage_ids.iter().map(|s| s.len()).max().unwrap_or(0),
            styles,
            bars,
            spinners: HashMap::new(),
            broken: None,
        }
    }

    fn prefix(&self, stage: &str) -> String {
        let padded = format!("{stage:<width$}", width = self.width);
        match self.styles.get(stage) {
            Some(style) => style.apply_to(padded).to_string(),
            None => padded,
        }
    }

    /// Prints a line above the spinners (or plainly to stdout without a terminal).
    fn line(&mut self, text: String) {
        if self.broken.is_some() {
            return;
        }
        let written = match &self.bars {
            Some(bars) => bars.suspend(|| outln!("{text}")),
            None => outln!("{text}"),
        };
        self.broken = written.err();
    }

    pub fn event(&mut self, event: ExecEvent) {
        match event {
            ExecEvent::StageStarted { id, attempt } => {
                let retry = if attempt > 1 {
                    format!(" (attempt {attempt})")
                } else {
                    String::new()
                };
                self.line(format!("{} | ▶ stage started{retry}", self.prefix(&id)));
                if let Some(bars) = &self.bars {
                    let bar = bars.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {prefix} {wide_msg} {elapsed}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_prefix(self.prefix(&id));
                    bar.enable_steady_tick(Duration::from_millis(120));
                    self.spinners.insert(id, bar);
                }
            }
            ExecEvent::Runner(StageEvent::StepStarted { stage, index, name }) => {
                if let Some(bar) = self.spinners.get(&stage) {
                    bar.set_message(format!("step {}: {name}", index + 1));
                }
                self.line(format!("{} | ▶ step {name}", self.prefix(&stage)));
            }
            ExecEvent::Runner(StageEvent::Waiting { stage, reason }) => {
                let text = match reason {
                    Some(why) => format!("… waiting: {why}"),
                    None => "… no longer waiting".to_owned(),
                };
                self.line(format!("{} | {text}", self.prefix(&stage)));
            }
            ExecEvent::Runner(StageEvent::Line(line)) => {
                let text = String::from_utf8_lossy(&line.bytes);
                self.line(format!("{} | {text}", self.prefix(&line.stage)));
            }
            ExecEvent::Runner(StageEvent::StepFinished {
                stage,
                name,
                outcome,
                ..
            }) => {
                let code = outcome
                    .exit_code
                    .map(|c| format!(", exit {c}"))
                    .unwrap_or_default();
                self.line(format!(
                    "{} | {} step {name} {}{code} ({})",
                    self.prefix(&stage),
                    self.mark(&outcome.status),
                    status_word(&outcome.status),
                    human(outcome.duration)
                ));
            }
            ExecEvent::StageFinished(report) => {
                if let Some(bar) = self.spinners.remove(&report.id) {
                    bar.finish_and_clear();
                }
                let (mark, word) = match &report.result {
                    StageResult::Ran(o) => (self.mark(&o.status), status_word(&o.status)),
                    StageResult::Skipped(why) | StageResult::Unsupported(why) => {
                        (self.dim("○"), format!("not run: {why}"))
                    }
                };
                self.line(format!("{} | {mark} stage {word}", self.prefix(&report.id)));
            }
        }
    }

    fn mark(&self, status: &Status) -> String {
        let (mark, style) = match status {
            Status::Success => ("✓", Style::new().green()),
            Status::Skipped => ("○", Style::new().dim()),
            _ => ("✗", Style::new().red().bold()),
        };
        style.force_styling(self.colour).apply_to(mark).to_string()
    }

    fn dim(&self, s: &str) -> String {
        Style::new()
            .dim()
            .force_styling(self.colour)
            .apply_to(s)
            .to_string()
    }

    /// The table of stages and the verdict: the run's status (see `engine::execute`).
    /// Fails with the first failed write to stdout, of the summary or of a line before.
    pub fn summary(
        &mut self,
        reports: &[StageReport],
        status: RunStatus,
    ) -> Result<(), StdoutError> {
        if let Some(e) = self.broken.take() {
            return Err(e);
        }
        if let Some(bars) = &self.bars {
            let _ = bars.clear();
        }
        let rows: Vec<[String; 4]> = reports
            .iter()
            .map(|r| match &r.result {
                StageResult::Ran(o) => {
                    let failed_step = o
                        .steps
                        .iter()
                        .find(|s| s.status != Status::Success && s.status != Status::Skipped);
                    let mut detail = match (failed_step, &o.status) {
                        (Some(s), _) => format!(
                            "step `{}` {}{}",
                            s.name,
                            status_word(&s.status),
                            s.exit_code
                                .map(|c| format!(" (exit {c})"))
                                .unwrap_or_default()
                        ),
                        (None, Status::Error(e)) => e.clone(),
                        (None, _) => match o.steps.len() {
                            1 => "1 step".to_string(),
                            n => format!("{n} steps"),
                        },
                    };
                    if r.attempts > 1 {
                        detail += &format!(", {} attempts", r.attempts);
                    }
                    for a in &o.artifacts {
                        detail += &format!(", {} sha256:{}", a.path, short(&a.sha256));
                    }
                    [
                        r.id.clone(),
                        status_word(&o.status),
                        human(o.duration),
                        detail,
                    ]
                }
                StageResult::Skipped(why) => {
                    [r.id.clone(), "skipped".into(), "-".into(), why.clone()]
                }
                StageResult::Unsupported(why) => {
                    [r.id.clone(), "not run".into(), "-".into(), why.clone()]
                }
            })
            .collect();
        let header = ["STAGE", "STATUS", "TIME", "DETAIL"];
        let widths: Vec<usize> = (0..3)
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let bold = Style::new().bold().force_styling(self.colour);
        outln!()?;
        outln!(
            "{}",
            bold.apply_to(format!(
                "{:<w0$}  {:<w1$}  {:>w2$}  {}",
                header[0],
                header[1],
                header[2],
                header[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            ))
        )?;
        for row in &rows {
            let status_style = match row[1].as_str() {
                "success" => Style::new().green(),
                "skipped" | "not run" => Style::new().dim(),
                _ => Style::new().red().bold(),
            }
            .force_styling(self.colour);
            outln!(
                "{:<w0$}  {}  {:>w2$}  {}",
                row[0],
                status_style.apply_to(format!("{:<w1$}", row[1], w1 = widths[1])),
                row[2],
                row[3],
                w0 = widths[0],
                w2 = widths[2]
            )?;
        }
        let failed = reports.iter().filter(|r| r.result.failed()).count();
        let ran = reports
            .iter()
            .filter(|r| matches!(r.result, StageResult::Ran(_)))
            .count();
        let verdict = if status == RunStatus::Success {
            Style::new()
                .green()
                .bold()
                .force_styling(self.colour)
                .apply_to("success")
        } else {
            Style::new()
                .red()
                .bold()
                .force_styling(self.colour)
                .apply_to("failed")
        };
        outln!(
            "\n{verdict}: {ran} stage{} ran, {failed} failed, {} not run",
            if ran == 1 { "" } else { "s" },
            reports.len() - ran
        )
    }
}

pub fn status_word(status: &Status) -> String {
    match status {
        Status::Success => "success".into(),
        Status::Failure => "failure".into(),
        Status::TimedOut => "timed out".into(),
        Status::Cancelled => "cancelled".into(),
        Status::Skipped => "skipped".into(),
        Status::Error(_) => "error".into(),
    }
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

fn human(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

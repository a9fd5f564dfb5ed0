//! `slipway logs REPO N [STAGE [STEP]] [-f]`: a run's step logs through the API —
//! what is there, or (`-f`) live until the steps end, step after step, over the log
//! endpoint's server-sent events. Colours are kept when stdout is a terminal (and
//! `NO_COLOR` is unset), removed otherwise.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use super::admin::text;
use super::client::{Api, ApiArgs};
use super::runs::run_path;
use crate::cli::stdio::{errln, outln};

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The repository, `owner/name`.
    pub repo: String,
    /// The run's number.
    pub number: i64,
    /// Only this stage: its key as `runs show` prints it, or the part after `pipeline/`.
    pub stage: Option<String>,
    /// Only this step of the stage: its name or its position (1, 2 …).
    pub step: Option<String>,
    /// Follow: print lines as they come until the steps (and so the run) have ended.
    #[arg(short, long)]
    pub follow: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// How often the run is looked at again while waiting for a step to start.
const WAIT_STEP: Duration = Duration::from_millis(300);

/// One step to print: where its log is, and how to name it.
struct StepRef {
    stage_id: i64,
    idx: i64,
    title: String,
}

pub fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let run = run_path(&args.repo, args.number)?;
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let detail = api.get(&run)?;
    let steps = select(&detail, args.stage.as_deref(), args.step.as_deref())?;
    let titled = steps.len() > 1;
    for step in &steps {
        let path = format!("{run}/stages/{}/steps/{}/logs", step.stage_id, step.idx);
        if args.follow {
            if !wait_started(&api, &run, step)? {
                continue;
            }
            if titled {
                errln!("==> {}", step.title);
            }
            follow(&api, &path, colour)?;
        } else {
            if titled {
                errln!("==> {}", step.title);
            }
            print_all(&api, &path, colour)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The steps the arguments name, in the run's order.
fn select(detail: &Value, stage: Option<&str>, step: Option<&str>) -> anyhow::Result<Vec<StepRef>> {
    let stages: Vec<&Value> = detail["stages"].as_array().into_iter().flatten().collect();
    let chosen: Vec<&Value> = match stage {
        None => stages,
        Some(want) => {
            let exact: Vec<&Value> = stages
                .iter()
                .copied()
                .filter(|s| text(s, "key") == want)
                .collect();
            let found = if exact.is_empty() {
                stages
                    .iter()
                    .copied()
                    .filter(|s| {
                        text(s, "key")
                            .split_once('/')
                            .is_some_and(|(_, k)| k == want)
                    })
                    .collect()
            } else {
                exact
            };
            match found.len() {
                1 => found,
                0 => bail!(
                    "the run has no stage {want:?}; its stages: {}",
                    detail["stages"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|s| text(s, "key"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                _ => bail!("{want:?} names several stages; give the whole key"),
            }
        }
    };
    let mut out = Vec::new();
    for s in chosen {
        let steps: Vec<&Value> = s["steps"].as_array().into_iter().flatten().collect();
        let picked: Vec<&Value> = match step {
            None => steps,
            Some(want) => {
                let by_name: Vec<&Value> = steps
                    .iter()
                    .copied()
                    .filter(|st| text(st, "name") == want)
                    .collect();
                let by_position = want
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| n.checked_sub(1))
                    .and_then(|i| steps.get(i).copied());
                match (by_name.first(), by_position) {
                    (Some(st), _) => vec![*st],
                    (None, Some(st)) => vec![st],
                    (None, None) => bail!("stage {} has no step {want:?}", text(s, "key")),
                }
            }
        };
        for st in picked {
            out.push(StepRef {
                stage_id: s["id"].as_i64().context("a stage without an id")?,
                idx: st["idx"].as_i64().context("a step without an index")?,
                title: format!("{} / {}", text(s, "key"), text(st, "name")),
            });
        }
    }
    Ok(out)
}

/// Waits until the step has started; false if it ended without running (skipped,
/// cancelled before it started) — then it has no log to follow.
fn wait_started(api: &Api, run: &str, step: &StepRef) -> anyhow::Result<bool> {
    loop {
        let detail = api.get(run)?;
        let st = detail["stages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["id"].as_i64() == Some(step.stage_id))
            .flat_map(|s| s["steps"].as_array().into_iter().flatten())
            .find(|st| st["idx"].as_i64() == Some(step.idx))
            .cloned()
            .unwrap_or(Value::Null);
        match text(&st, "status") {
            "pending" => {}
            "skipped" | "cancelled" if st["started_at"].is_null() => return Ok(false),
            _ => return Ok(true),
        }
        let run_status = text(&detail["run"], "status");
        if !matches!(run_status, "pending" | "running") {
            // The run ended and this step never started.
            return Ok(false);
        }
        std::thread::sleep(WAIT_STEP);
    }
}

fn print_line(text: &str, colour: bool) -> anyhow::Result<()> {
    if colour {
        outln!("{text}")?;
    } else {
        outln!("{}", crate::web::failure::plain(text.as_bytes()))?;
    }
    Ok(())
}

/// The step's log as it is now, page by page.
fn print_all(api: &Api, path: &str, colour: bool) -> anyhow::Result<()> {
    let mut from = 1;
    loop {
        let page = api.get(&format!("{path}?from={from}&limit=10000"))?;
        let lines = page["lines"].as_array().cloned().unwrap_or_default();
        for l in &lines {
            print_line(text(l, "text"), colour)?;
        }
        let next = page["next"].as_u64().unwrap_or(from);
        if lines.is_empty() || next <= from {
            return Ok(());
        }
        from = next;
    }
}

/// Follows the step's log over server-sent events until its `end` event; reconnects
/// (from the next line) a few times if the connection breaks.
fn follow(api: &Api, path: &str, colour: bool) -> anyhow::Result<()> {
    let mut next: u64 = 1;
    let mut failures = 0;
    loop {
        let url = format!("{path}/follow?from={next}");
        let ended = api.block_on(async |http, base, token| {
            let mut response = http
                .get(format!("{base}{url}"))
                .bearer_auth(token)
                .header("accept", "text/event-stream")
                .send()
                .await
                .with_context(|| format!("GET {base}{url}"))?;
            let status = response.status();
            if !status.is_success() {
                let body: Value = response.json().await.unwrap_or_default();
                let message = body["error"]["message"].as_str().unwrap_or("no details");
                bail!("the server answered {status}: {message}");
            }
            let mut buffer: Vec<u8> = Vec::new();
            loop {
                let Some(chunk) = response.chunk().await? else {
                    return Ok(false);
                };
                buffer.extend_from_slice(&chunk);
                while let Some(end) = find_blank_line(&buffer) {
                    let event: Vec<u8> = buffer.drain(..end.1).collect();
                    let event = String::from_utf8_lossy(&event[..end.0]).into_owned();
                    let (name, data) = parse_event(&event);
                    match name.as_str() {
                        "line" => {
                            let line: Value = serde_json::from_str(&data).unwrap_or_default();
                            print_line(text(&line, "text"), colour)?;
                            if let Some(n) = line["number"].as_u64() {
                                next = n + 1;
                            }
                        }
                        "end" => return Ok(true),
                        _ => {}
                    }
                }
            }
        });
        match ended {
            Ok(true) => return Ok(()),
            Ok(false) | Err(_) if failures < 5 => {
                if let Err(e) = &ended
                    && e.downcast_ref::<crate::cli::stdio::StdoutError>().is_some()
                {
                    return ended.map(|_| ());
                }
                failures += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            Ok(false) => bail!("the server closed the log stream before the step ended"),
            Err(e) => return Err(e),
        }
    }
}

/// The end of the first event in `buf`: (where its text ends, where the next begins).
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// An event's name (default `message`) and its data lines joined.
fn parse_event(event: &str) -> (String, String) {
    let mut name = "message".to_string();
    let mut data: Vec<&str> = Vec::new();
    for line in event.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => name = value.to_string(),
            "data" => data.push(value),
            _ => {}
        }
    }
    (name, data.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_and_parsed() {
        let buf = b"event: line\nid: 1\ndata: {\"text\":\"a\"}\n\n: keep-alive\n\nrest";
        let (end, next) = find_blank_line(buf).unwrap();
        let (name, data) = parse_event(std::str::from_utf8(&buf[..end]).unwrap());
        assert_eq!((name.as_str(), data.as_str()), ("line", "{\"text\":\"a\"}"));
        let (_, next2) = find_blank_line(&buf[next..]).unwrap();
        assert_eq!(&buf[next + next2..], b"rest");
    }
}

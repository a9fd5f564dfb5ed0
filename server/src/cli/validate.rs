//! `slipway validate [PATH]`.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::pipeline_files;

use super::diagnostics;
use crate::cli::stdio::{errln, outln};

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let files = pipeline_files::from_path(path)?;
    let colour = console::colors_enabled_stderr();
    match load(&files, colour) {
        Ok(pipelines) => {
            let stages: usize = pipelines.iter().map(|p| p.stages.len()).sum();
            outln!(
                "ok: {} pipeline{} with {stages} stage{} in {} file{}",
                pipelines.len(),
                plural(pipelines.len()),
                plural(stages),
                files.len(),
                plural(files.len())
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(()) => Ok(ExitCode::FAILURE),
    }
}

/// Loads the files, printing every diagnostic (warnings too) to stderr. `Err` means at
/// least one error was printed.
pub fn load(
    files: &[pipeline_files::PipelineFile],
    colour: bool,
) -> Result<Vec<pipelines::Pipeline>, ()> {
    let source_of = |file: &str| {
        files
            .iter()
            .find(|(path, _)| path == file)
            .map(|(_, text)| text.as_str())
    };
    let print = |diags: &[pipelines::Diagnostic]| {
        for d in diags {
            errln!("{}", diagnostics::render(d, source_of(&d.file), colour));
        }
    };
    match pipelines::load(files) {
        Ok(pipelines) => {
            for p in &pipelines {
                print(&p.warnings);
            }
            Ok(pipelines)
        }
        Err(diags) => {
            print(&diags);
            let errors = diags
                .iter()
                .filter(|d| d.severity == pipelines::Severity::Error)
                .count();
            errln!(
                "{}: {errors} error{} found",
                if colour {
                    console::style("failed").red().bold().to_string()
                } else {
                    "failed".into()
                },
                plural(errors)
            );
            Err(())
        }
    }
}

pub fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

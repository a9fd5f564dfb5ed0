//! The `slipway` command line: one sub-module per command.

mod diagnostics;
mod exec;
mod output;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "slipway", version, about = "Slipway: self-hosted CI/CD", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check pipeline files and print every problem with file:line:column.
    Validate {
        /// A repository directory or a single pipeline file.
        #[arg(default_value = ".")]
        path: PathBuf,
    },
    /// Run a repository's pipelines here, on the local backend.
    Exec(Box<exec::ExecArgs>),
    /// Print the JSON Schema of the pipeline format, for editors.
    Schema,
}

/// Runs the parsed command line; the exit code is what the process should return.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { path } => validate::run(&path),
        Command::Exec(args) => exec::run(*args),
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&pipelines::json_schema())?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

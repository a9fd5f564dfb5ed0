use std::process::ExitCode;

use clap::Parser;
use server::cli::stdio::{StdoutError, flush_out, write_err};

fn main() -> ExitCode {
    let result = match server::cli::Cli::try_parse() {
        Ok(cli) => server::cli::run(cli),
        // `--help`, `--version` (stdout) or a usage error (stderr), as clap prints them,
        // but a failed write to stdout is reported like any other.
        Err(e) => e
            .print()
            .map_err(|io| anyhow::Error::from(StdoutError(io)))
            .map(|()| ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))),
    };
    let result = result.and_then(|code| {
        flush_out()?;
        Ok(code)
    });
    match result {
        Ok(code) => code,
        // The reader of a pipe went away (`slipway schema | head`): nothing to say.
        Err(e)
            if e.downcast_ref::<StdoutError>()
                .is_some_and(StdoutError::is_broken_pipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            write_err(format_args!("error: {e:#}"));
            ExitCode::from(2)
        }
    }
}

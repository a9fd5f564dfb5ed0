//! Writing to stdout and stderr without panicking. `println!` panics when stdout is a
//! closed pipe (`slipway schema | head`) or a full disk (`> /dev/full`); every command
//! prints through [`outln!`] instead, which return the error as a
//! [`StdoutError`]: `main` ends quietly (exit 0) when the reader went away, and says
//! what failed otherwise. Messages to stderr ([`errln!`]) are best effort: when stderr
//! itself cannot be written, there is nobody left to tell. The lints at the top of
//! `cli/mod.rs` keep `println!` and `eprintln!` out of the commands.

use std::fmt;
use std::io::Write;

/// A failed write to stdout.
#[derive(Debug, thiserror::Error)]
#[error("writing to stdout")]
pub struct StdoutError(#[source] pub std::io::Error);

impl StdoutError {
    /// The reader of a pipe went away: not worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// Writes formatted text to stdout (used by [`out!`] and [`outln!`]).
pub fn write_out(args: fmt::Arguments<'_>, newline: bool) -> Result<(), StdoutError> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args).map_err(StdoutError)?;
    if newline {
        out.write_all(b"\n").map_err(StdoutError)?;
    }
    Ok(())
}

/// Flushes stdout: what is still buffered when a command ends is written here, so a
/// full disk is reported rather than lost at exit.
pub fn flush_out() -> Result<(), StdoutError> {
    std::io::stdout().flush().map_err(StdoutError)
}

/// Writes formatted text to stderr, ignoring failure (see the module comment).
pub fn write_err(args: fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args);
    let _ = err.write_all(b"\n");
}

/// `println!` that returns `Result<(), StdoutError>` instead of panicking.
macro_rules! outln {
    () => {
        $crate::cli::stdio::write_out(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::cli::stdio::write_out(format_args!($($arg)*), true)
    };
}

/// `eprintln!` that never panics.
macro_rules! errln {
    () => {
        $crate::cli::stdio::write_err(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::stdio::write_err(format_args!($($arg)*))
    };
}

pub(crate) use {errln, outln};

//! Results on stdout. A reader that goes away (`swarm-dl cache ls | head`) closes the pipe; the
//! write then fails with `BrokenPipe`, which travels up as an ordinary error and ends the
//! process quietly with status 0, as `ripgrep` does, instead of a panic.

use std::io::{self, Write as _};

/// Writes one line to stdout, reporting a closed pipe as an error (`println!` panics on it).
pub fn line(args: std::fmt::Arguments<'_>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Whether `e` (or one of its causes) is a write to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe))
}

/// `println!` that returns a closed pipe as an error: `outln!("{x}")?`.
macro_rules! outln {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

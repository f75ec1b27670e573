//! The serial console's output side, and the moment the guest first wrote to it.

use std::fs::OpenOptions;
use std::io::{self, LineWriter, Write};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::config::Console;

/// Errors while opening the console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot open console file {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        source: io::Error,
    },
}

/// Wraps the console's writer and records when the first byte went through.
pub struct TimedWriter {
    inner: Box<dyn Write + Send>,
    first_byte: Arc<OnceLock<Instant>>,
    /// Interactive consoles show partial lines (prompts) at once.
    flush_each_write: bool,
}

impl Write for TimedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() {
            self.first_byte.get_or_init(Instant::now);
        }
        let written = self.inner.write(buf)?;
        if self.flush_each_write {
            self.inner.flush()?;
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Builds the console writer; `first_byte` is set when the guest writes its first byte.
pub fn open(
    console: Console,
    first_byte: Arc<OnceLock<Instant>>,
) -> Result<TimedWriter, ConsoleError> {
    let flush_each_write = matches!(console, Console::Stdout);
    let inner: Box<dyn Write + Send> = match console {
        Console::Stdout => Box::new(io::stdout()),
        Console::Off => Box::new(io::sink()),
        Console::File(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| ConsoleError::Open { path, source })?;
            Box::new(LineWriter::new(file))
        }
        Console::Writer(w) => w,
    };
    Ok(TimedWriter {
        inner,
        first_byte,
        flush_each_write,
    })
}

//! Logging to stderr (the console when the agent is PID 1), with every line marked when the
//! agent runs on the insecure development attestation backend.

use std::io::Write;

use tracing_subscriber::fmt::MakeWriter;

/// The mark put in front of every log line in insecure development mode.
pub const INSECURE_MARK: &str = "[INSECURE: development attestation, no SEV-SNP] ";

/// Makes one [`LineWriter`] per event.
#[derive(Clone, Copy, Debug)]
pub struct ConsoleWriter {
    insecure: bool,
}

/// Collects one formatted event and writes it, marked if needed, in a single write on drop.
pub struct LineWriter {
    insecure: bool,
    buf: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut line = Vec::with_capacity(self.buf.len() + INSECURE_MARK.len());
        if self.insecure {
            line.extend_from_slice(INSECURE_MARK.as_bytes());
        }
        line.extend_from_slice(&self.buf);
        let _ = std::io::stderr().write_all(&line);
    }
}

impl<'a> MakeWriter<'a> for ConsoleWriter {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            insecure: self.insecure,
            buf: Vec::new(),
        }
    }
}

/// Installs the global subscriber (level from `RUST_LOG`, default `info`).
pub fn init(insecure: bool) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(ConsoleWriter { insecure })
        // No colour codes on the VM console (PID 1) or in files and pipes.
        .with_ansi(std::process::id() != 1 && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

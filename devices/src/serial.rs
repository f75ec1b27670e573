//! The 16550A UART the guest uses as its console (COM1: port 0x3f8, IRQ 4).

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use crate::bus::BusDevice;
use crate::EventFdTrigger;

/// Port base of COM1.
pub const COM1_PORT: u64 = 0x3f8;
/// Number of UART registers.
pub const PORT_LEN: u64 = 8;
/// Legacy IRQ line of COM1.
pub const COM1_IRQ: u32 = 4;

/// A serial console whose transmit side goes to `out`.
pub struct SerialConsole {
    uart: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl SerialConsole {
    /// A UART raising `interrupt` and writing what the guest transmits to `out`.
    pub fn new(interrupt: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Serial::new(interrupt, out),
        }
    }

    /// Queues host input (keyboard) for the guest to read; returns how many bytes fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        // The only error is a failed interrupt trigger; the bytes stay queued either way.
        let room = self.uart.fifo_capacity().min(bytes.len());
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("serial input interrupt failed: {e:?}");
                room
            }
        }
    }

    /// Room left in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The UART has byte-wide registers; wider or out-of-range reads see all ones.
        data.fill(0xff);
        if let ([byte], Ok(offset @ 0..=7)) = (data, u8::try_from(offset)) {
            *byte = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([value], Ok(offset @ 0..=7)) = (data, u8::try_from(offset)) {
            if let Err(e) = self.uart.write(offset, *value) {
                // A console that can no longer be written (closed pipe) must not stop the VM.
                tracing::debug!("serial output failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_bytes_and_reads_back_input() {
        let sink = Sink::default();
        let mut serial = SerialConsole::new(EventFdTrigger::new().unwrap(), Box::new(sink.clone()));
        for b in b"hi" {
            serial.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");

        assert_eq!(serial.enqueue_input(b"k"), 1);
        let mut lsr = [0];
        serial.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "line status must report data ready");
        let mut rbr = [0];
        serial.read(0, &mut rbr);
        assert_eq!(rbr, [b'k']);
    }

    #[test]
    fn ignores_wide_and_out_of_range_accesses() {
        let sink = Sink::default();
        let mut serial = SerialConsole::new(EventFdTrigger::new().unwrap(), Box::new(sink.clone()));
        serial.write(0, b"ab");
        serial.write(9, b"c");
        assert!(sink.0.lock().unwrap().is_empty());
        let mut wide = [0u8; 4];
        serial.read(0, &mut wide);
        assert_eq!(wide, [0xff; 4]);
    }
}

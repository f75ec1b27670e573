//! The i8042 keyboard controller, present only so that a guest `reboot` (command 0xFE on port
//! 0x64) reaches the VMM, which ends the VM.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;
use crate::EventFdTrigger;

/// Port base of the controller (data 0x60, command/status 0x64).
pub const I8042_PORT: u64 = 0x60;
/// Ports covered from the base.
pub const PORT_LEN: u64 = 5;

/// The reset-only keyboard controller.
pub struct ResetController(I8042Device<ResetSignal>);

impl ResetController {
    /// A controller that, when the guest asks for a CPU reset, sets `stop_vcpus` and signals
    /// `reset`.
    pub fn new(reset: EventFdTrigger, stop_vcpus: Arc<AtomicBool>) -> Self {
        Self(I8042Device::new(ResetSignal { reset, stop_vcpus }))
    }
}

/// What a reset request does. The vCPUs stop at their next exit (the one that asked, at once:
/// Linux gives the keyboard controller about a millisecond before it falls back to a triple
/// fault, and the VMM's event loop, which ends the VM on `reset`, may wake later than that on
/// a busy host).
struct ResetSignal {
    reset: EventFdTrigger,
    stop_vcpus: Arc<AtomicBool>,
}

impl Trigger for ResetSignal {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.stop_vcpus.store(true, Ordering::Release);
        self.reset.trigger()
    }
}

impl BusDevice for ResetController {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            *byte = self.0.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([value], Ok(offset)) = (data, u8::try_from(offset)) {
            if let Err(e) = self.0.write(offset, *value) {
                tracing::error!("i8042 reset signal failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_signals_only_on_the_command_port() {
        let reset = EventFdTrigger::new().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut ctl = ResetController::new(reset.try_clone().unwrap(), stop.clone());
        ctl.write(0, &[0xfe]);
        ctl.write(4, &[0xfe, 0]);
        ctl.write(4, &[0xfd]);
        assert!(reset.read().is_err(), "nothing but 0xfe on 0x64 may reset");
        assert!(!stop.load(Ordering::Acquire), "nor stop the vCPUs");
        ctl.write(4, &[0xfe]);
        assert_eq!(reset.read().unwrap(), 1);
        assert!(
            stop.load(Ordering::Acquire),
            "the vCPUs stop before the event loop wakes"
        );
    }
}

//! KVM's supported CPUID, asked for on a thread of its own while the VM is built.
//!
//! KVM_GET_SUPPORTED_CPUID is the slowest ioctl of a VM's build on the hosts measured
//! (~0.3 ms: the host executes CPUID for every leaf, and each is a trap when the host is
//! itself a guest). It needs only `/dev/kvm`, not the VM, so it runs beside creating the VM,
//! its memory, interrupt controllers and devices, on a core that is otherwise idle then.

use std::os::fd::{AsRawFd, FromRawFd};
use std::thread::JoinHandle;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

/// The query under way; [`SupportedCpuid::get`] waits for its answer. Dropped unasked (the
/// build failed), it still waits for the thread, so no thread outlives the build.
pub struct SupportedCpuid {
    query: Option<JoinHandle<Result<CpuId, kvm_ioctls::Error>>>,
}

impl SupportedCpuid {
    /// Starts the query on its own thread, with its own descriptor of `/dev/kvm`. Where no
    /// thread can be started, [`get`](Self::get) asks on the caller's instead.
    pub fn start(kvm: &Kvm) -> Self {
        // SAFETY: F_DUPFD_CLOEXEC only duplicates a descriptor we hold open.
        let fd = unsafe { libc::fcntl(kvm.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Self { query: None };
        }
        // SAFETY: `fd` is a fresh duplicate of an open /dev/kvm descriptor, owned from here.
        let own = unsafe { Kvm::from_raw_fd(fd) };
        let query = std::thread::Builder::new()
            .name("veil-cpuid".into())
            .spawn(move || own.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES))
            .ok();
        Self { query }
    }

    /// The supported CPUID, once the query has answered.
    pub fn get(mut self, kvm: &Kvm) -> Result<CpuId, kvm_ioctls::Error> {
        match self.query.take().map(JoinHandle::join) {
            Some(Ok(answer)) => answer,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES),
        }
    }
}

impl Drop for SupportedCpuid {
    fn drop(&mut self) {
        if let Some(query) = self.query.take() {
            let _ = query.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer from the thread is KVM's answer to the same question asked directly.
    #[test]
    fn the_background_answer_is_kvms() {
        let kvm = Kvm::new().expect("/dev/kvm");
        let direct = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let background = SupportedCpuid::start(&kvm).get(&kvm).unwrap();
        assert_eq!(background.as_slice(), direct.as_slice());
        assert!(!direct.as_slice().is_empty());
        // Dropped unasked: the thread is joined, nothing is left running.
        drop(SupportedCpuid::start(&kvm));
    }
}

//! The VMM used as a library, the way the shim embeds it: console captured through a
//! writer, the VM stopped from another thread, nothing left running afterwards.

use std::sync::Mutex;
use std::time::Duration;

use veil_tests::{Capture, Guest};
use veil_vmm::{BlockConfig, Console, KernelSource, Vm, VmConfig, VmExit};

/// The tests count this process's threads and fds: run them one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn threads_of_this_process() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn stop_handle_ends_a_running_vm_and_joins_its_threads() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let before = threads_of_this_process();
    let capture = Capture::default();
    let mut config = VmConfig::new(KernelSource::Path(Guest::Idle.path().into()));
    config.vcpus = 2;
    config.console = Console::Writer(Box::new(capture.clone()));
    let vm = Vm::new(config).unwrap();
    let stop = vm.stop_handle();
    let watcher_capture = capture.clone();
    let watcher = std::thread::spawn(move || {
        // Stop only once the guest is demonstrably running.
        while !watcher_capture.text().contains('\n') {
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.stop();
    });
    let outcome = vm.run().unwrap();
    watcher.join().unwrap();
    assert_eq!(outcome.exit, VmExit::StopRequested);
    assert_eq!(capture.text(), "veil-test-guest idle\n");
    let t = outcome.timings;
    assert!(t.vm_created <= t.first_vcpu_run.unwrap());
    assert!(t.first_vcpu_run.unwrap() <= t.first_console_output.unwrap());
    assert!(t.first_console_output.unwrap() <= t.exited);
    // Other test threads of this harness may end meanwhile, never start: any growth is ours.
    let after = threads_of_this_process();
    assert!(
        after <= before,
        "vCPU threads outlived the VM: {before} threads before, {after} after"
    );
}

#[test]
fn guest_reset_ends_run_with_its_output_captured() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let capture = Capture::default();
    let mut config = VmConfig::new(KernelSource::Path(Guest::BootInfo.path().into()));
    config.cmdline = "embedded=yes".into();
    config.console = Console::Writer(Box::new(capture.clone()));
    let outcome = Vm::new(config).unwrap().run().unwrap();
    assert_eq!(outcome.exit, VmExit::GuestReset);
    assert!(outcome.exit.is_clean());
    assert!(
        capture.text().contains("cmdline=[embedded=yes]\n"),
        "{}",
        capture.text()
    );
}

#[test]
fn many_vms_in_one_process_leak_no_file_descriptors() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    // The first VM installs process-wide state (the kick signal handler); count after it.
    let boot = || {
        let mut config = VmConfig::new(KernelSource::Path(Guest::BootInfo.path().into()));
        config.console = Console::Off;
        assert_eq!(
            Vm::new(config).unwrap().run().unwrap().exit,
            VmExit::GuestReset
        );
    };
    boot();
    let before = fds();
    for _ in 0..5 {
        boot();
    }
    assert_eq!(fds(), before);
}

#[test]
fn disks_swap_their_backing_file_while_the_vm_runs() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let layer = dir.path().join("layer.img");
    std::fs::write(&layer, vec![0u8; 1 << 20]).unwrap();
    let capture = Capture::default();
    let mut config = VmConfig::new(KernelSource::Path(Guest::Idle.path().into()));
    config.console = Console::Writer(Box::new(capture.clone()));
    // A placeholder drive, as a pod sandbox pre-attaches for containers added later.
    config.disks = vec![BlockConfig {
        path: None,
        read_only: true,
        id: "layer0".into(),
    }];
    let vm = Vm::new(config).unwrap();
    assert!(
        vm.cmdline().ends_with("virtio_mmio.device=4K@0xd0001000:5"),
        "{}",
        vm.cmdline()
    );
    let disks = vm.disks();
    let stop = vm.stop_handle();
    let watcher_capture = capture.clone();
    let swapper = std::thread::spawn(move || {
        while !watcher_capture.text().contains('\n') {
            std::thread::sleep(Duration::from_millis(1));
        }
        let swapped = disks[0].swap(&layer);
        let missing = disks[0].swap(&layer.with_extension("missing"));
        stop.stop();
        (swapped, missing)
    });
    let outcome = vm.run().unwrap();
    let (swapped, missing) = swapper.join().unwrap();
    assert_eq!(outcome.exit, VmExit::StopRequested);
    swapped.expect("swapping in an existing image while the guest runs");
    let err = missing
        .expect_err("a missing image must be refused")
        .to_string();
    assert!(err.contains("layer.missing"), "{err}");
}

/// An embedding program launching an IGVM guest the SNP way with the insecure model: the
/// digest `Vm` reports is the one `veil_snp` computes for the same file and vCPU count. The
/// image's page tables carry the C-bit, so run unencrypted the guest then faults, and the
/// VMM reports that without leaving threads behind.
#[test]
fn snp_model_launch_through_the_library_reports_the_expected_digest() {
    use veil_snp::igvm::{build_igvm, load_igvm, BuildInput};
    use veil_vmm::{SnpConfig, SnpFirmware};

    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let kernel = std::fs::read(Guest::BootInfo.path()).unwrap();
    let built = build_igvm(&BuildInput {
        kernel: &kernel,
        initrd: None,
        cmdline: "console=ttyS0",
        mem_mib: 64,
        policy: 0x30000,
        c_bit: 51,
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let igvm = dir.path().join("guest.igvm");
    std::fs::write(&igvm, &built.bytes).unwrap();

    let before = threads_of_this_process();
    let mut config = VmConfig::new(KernelSource::Igvm(igvm));
    config.mem_mib = 64;
    config.vcpus = 2;
    config.console = Console::Off;
    config.snp = Some(SnpConfig {
        firmware: SnpFirmware::Model,
        ..SnpConfig::kvm_default()
    });
    let vm = Vm::new(config).unwrap();
    let launch = vm.snp_launch().expect("an SNP launch").clone();
    let plan = load_igvm(&built.bytes).unwrap();
    let expected = plan.launch_digest(2, launch.vcpu_signature).unwrap();
    assert_eq!(launch.digest, hex::encode(expected));
    assert_eq!(launch.firmware, SnpFirmware::Model);
    assert_eq!(launch.measured_bytes, plan.measured_bytes());

    let outcome = vm.run().unwrap();
    assert!(!outcome.exit.is_clean(), "{}", outcome.exit);
    assert_eq!(threads_of_this_process(), before);
}

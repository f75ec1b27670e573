//! Veil's benchmark harness: boots the same tiny guest with `veil`, a minimal KVM program
//! (the floor) and QEMU microvm, and reports boot latency, memory and density figures as JSON
//! and Markdown. See `benches/README.md`.

pub mod bench;
pub mod demo_size;
pub mod floor;
pub mod guest;
pub mod guest_report;
pub mod l1_run;
pub mod launch;
pub mod machine;
pub mod model_launch;
pub mod nested;
pub mod nested_pod;
pub mod net_nested;
pub mod openssl_speed;
pub mod pod;
pub mod proc_mem;
pub mod pvh_elf;
pub mod report;
pub mod sections;
pub mod stats;
pub mod tsc;
pub mod vmm;
pub mod vsock_echo;

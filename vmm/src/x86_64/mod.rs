//! x86_64 specifics: memory layout, boot protocols, vCPU state, CPUID and the MP table.

pub mod boot;
pub mod cpu_template;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;

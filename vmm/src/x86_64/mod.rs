//! x86_64 specifics: memory layout, boot protocols, vCPU state, CPUID and the MP table. The
//! GDT, page tables, zero page and shared layout are `veil_snp::x86_boot`'s.

pub mod boot;
pub mod cpu_template;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
pub mod supported_cpuid;

pub use veil_snp::x86_boot::gdt;

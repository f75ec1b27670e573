//! veil-vmm

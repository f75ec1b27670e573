//! The boot GDT, and the segment registers that match it as KVM (`kvm_segment`) and the SNP
//! VMSA (its attribute word) hold them.
//!
//! One table serves every entry: the PVH entry starts in 32-bit protected mode with the flat
//! 32-bit code segment, the 64-bit Linux boot protocol (the VMM's and the SNP image's) with
//! the 64-bit one. Linux's boot protocol asks for `__BOOT_CS` = 0x10 and `__BOOT_DS` = 0x18,
//! which fixes the order.

use kvm_bindings::kvm_segment;

/// A flat segment descriptor, described by its access byte and flags nibble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Access byte: present, DPL, S, type.
    access: u8,
    /// Flags nibble: granularity, default size (D/B), long mode (L), available.
    flags: u8,
    base: u32,
    limit: u32,
}

const ACCESS_PRESENT: u8 = 0x80;
const ACCESS_CODE_OR_DATA: u8 = 0x10;
const TYPE_CODE_READ_ACCESSED: u8 = 0xb;
const TYPE_DATA_WRITE_ACCESSED: u8 = 0x3;
const TYPE_TSS_BUSY: u8 = 0xb;
const FLAG_GRANULARITY_4K: u8 = 0x8;
const FLAG_DEFAULT_32BIT: u8 = 0x4;
const FLAG_LONG_MODE: u8 = 0x2;

impl Descriptor {
    const fn null() -> Self {
        Self {
            access: 0,
            flags: 0,
            base: 0,
            limit: 0,
        }
    }

    const fn flat(access: u8, flags: u8) -> Self {
        Self {
            access,
            flags,
            base: 0,
            limit: 0xf_ffff,
        }
    }

    /// The 8-byte GDT entry.
    pub fn to_gdt_entry(self) -> u64 {
        let base = u64::from(self.base);
        let limit = u64::from(self.limit);
        (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (u64::from(self.access) << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (u64::from(self.flags & 0xf) << 52)
            | (((base >> 24) & 0xff) << 56)
    }

    /// The segment's attribute word as Veil's VMSA model and the IGVM VP context hold it:
    /// the descriptor's bits 40-55 with the limit nibble cleared, i.e. the access byte in
    /// bits 0-7 and the flags nibble (AVL, L, D/B, G) in bits 12-15.
    pub fn vmsa_attributes(self) -> u16 {
        u16::from(self.access) | (u16::from(self.flags & 0xf) << 12)
    }

    /// The 4 KiB-granular limit as a segment register holds it.
    pub fn expanded_limit(self) -> u32 {
        if self.flags & FLAG_GRANULARITY_4K != 0 {
            (self.limit << 12) | 0xfff
        } else {
            self.limit
        }
    }

    /// The segment register KVM should hold after loading this descriptor with `selector`.
    pub fn to_kvm_segment(self, selector: u16) -> kvm_segment {
        let granular = self.flags & FLAG_GRANULARITY_4K != 0;
        kvm_segment {
            base: u64::from(self.base),
            limit: self.expanded_limit(),
            selector,
            type_: self.access & 0xf,
            present: u8::from(self.access & ACCESS_PRESENT != 0),
            dpl: (self.access >> 5) & 0x3,
            db: u8::from(self.flags & FLAG_DEFAULT_32BIT != 0),
            s: u8::from(self.access & ACCESS_CODE_OR_DATA != 0),
            l: u8::from(self.flags & FLAG_LONG_MODE != 0),
            g: u8::from(granular),
            avl: self.flags & 0x1,
            unusable: u8::from(self.access & ACCESS_PRESENT == 0),
            padding: 0,
        }
    }
}

/// 32-bit flat code, for the PVH entry.
pub const CODE32_SELECTOR: u16 = 0x08;
/// 64-bit code (`__BOOT_CS`).
pub const CODE64_SELECTOR: u16 = 0x10;
/// Flat data (`__BOOT_DS`).
pub const DATA_SELECTOR: u16 = 0x18;
/// Task state segment; KVM requires a usable TR on entry.
pub const TSS_SELECTOR: u16 = 0x20;

/// The boot GDT, indexed by selector / 8.
pub const BOOT_GDT: [Descriptor; 5] = [
    Descriptor::null(),
    Descriptor::flat(
        ACCESS_PRESENT | ACCESS_CODE_OR_DATA | TYPE_CODE_READ_ACCESSED,
        FLAG_GRANULARITY_4K | FLAG_DEFAULT_32BIT,
    ),
    Descriptor::flat(
        ACCESS_PRESENT | ACCESS_CODE_OR_DATA | TYPE_CODE_READ_ACCESSED,
        FLAG_GRANULARITY_4K | FLAG_LONG_MODE,
    ),
    Descriptor::flat(
        ACCESS_PRESENT | ACCESS_CODE_OR_DATA | TYPE_DATA_WRITE_ACCESSED,
        FLAG_GRANULARITY_4K | FLAG_DEFAULT_32BIT,
    ),
    Descriptor {
        access: ACCESS_PRESENT | TYPE_TSS_BUSY,
        flags: 0,
        base: 0,
        limit: 0x67,
    },
];

/// The descriptor a selector refers to in [`BOOT_GDT`].
pub fn descriptor(selector: u16) -> Descriptor {
    BOOT_GDT[usize::from(selector >> 3)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_the_architectural_encoding() {
        // Reference values from the Intel SDM's descriptor format, e.g. the classic
        // flat 4 GiB ring-0 code segment 0x00cf9b000000ffff.
        assert_eq!(
            descriptor(CODE32_SELECTOR).to_gdt_entry(),
            0x00cf_9b00_0000_ffff
        );
        assert_eq!(
            descriptor(CODE64_SELECTOR).to_gdt_entry(),
            0x00af_9b00_0000_ffff
        );
        assert_eq!(
            descriptor(DATA_SELECTOR).to_gdt_entry(),
            0x00cf_9300_0000_ffff
        );
        assert_eq!(
            descriptor(TSS_SELECTOR).to_gdt_entry(),
            0x0000_8b00_0000_0067
        );
        assert_eq!(BOOT_GDT[0].to_gdt_entry(), 0);
    }

    #[test]
    fn kvm_segments_agree_with_the_entries() {
        let cs = descriptor(CODE64_SELECTOR).to_kvm_segment(CODE64_SELECTOR);
        assert_eq!(
            (cs.l, cs.db, cs.g, cs.s, cs.present, cs.type_),
            (1, 0, 1, 1, 1, 0xb)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = descriptor(DATA_SELECTOR).to_kvm_segment(DATA_SELECTOR);
        assert_eq!((ds.l, ds.db, ds.type_, ds.selector), (0, 1, 3, 0x18));
        let tr = descriptor(TSS_SELECTOR).to_kvm_segment(TSS_SELECTOR);
        assert_eq!((tr.s, tr.type_, tr.limit, tr.unusable), (0, 0xb, 0x67, 0));
    }

    #[test]
    fn vmsa_attributes_use_the_svm_encoding() {
        // Bits 40-55 of 0x00af9b000000ffff and 0x00cf93000000ffff without the limit nibble.
        assert_eq!(descriptor(CODE64_SELECTOR).vmsa_attributes(), 0xa09b);
        assert_eq!(descriptor(DATA_SELECTOR).vmsa_attributes(), 0xc093);
        assert_eq!(descriptor(DATA_SELECTOR).expanded_limit(), 0xffff_ffff);
    }
}

//! The built-in demo guest: a few dozen bytes of 64-bit code, assembled by rustc into this
//! binary, that print a line on the serial console, hit the boot timer and reset the machine.
//!
//! It is entered like a 64-bit kernel (long mode, identity-mapped, RSI = boot_params) and is
//! position independent: the VMM copies it to 1 MiB.

use std::arch::global_asm;

global_asm!(
    ".pushsection .rodata.veil_demo_guest, \"a\"",
    ".global veil_demo_guest_start",
    ".global veil_demo_guest_end",
    ".code64",
    "veil_demo_guest_start:",
    // Print the message byte by byte on COM1's transmit register.
    "    lea 3f(%rip), %rbx",
    "    mov $0x3f8, %dx",
    "1:  movb (%rbx), %al",
    "    test %al, %al",
    "    jz 2f",
    "    outb %al, %dx",
    "    inc %rbx",
    "    jmp 1b",
    // Tell the boot timer (magic 123 at the start of its page) that the guest is up.
    "2:  mov $0xd0000000, %eax",
    "    movl $123, (%rax)",
    // Reset through the i8042 (command 0xfe on port 0x64): the VMM ends the VM cleanly.
    "    mov $0xfe, %al",
    "4:  outb %al, $0x64",
    "    hlt",
    "    jmp 4b",
    "3:  .asciz \"Hello from the Veil demo guest\\n\"",
    "veil_demo_guest_end:",
    ".popsection",
    options(att_syntax)
);

extern "C" {
    static veil_demo_guest_start: u8;
    static veil_demo_guest_end: u8;
}

/// The line the demo guest prints.
pub const DEMO_GREETING: &str = "Hello from the Veil demo guest";

/// The demo guest's code.
pub fn guest_code() -> &'static [u8] {
    // SAFETY: both symbols are defined by the assembly above, in the same read-only section,
    // start before end; the bytes between them are the guest's code and live for the whole
    // program.
    unsafe {
        let start = std::ptr::addr_of!(veil_demo_guest_start);
        let end = std::ptr::addr_of!(veil_demo_guest_end);
        std::slice::from_raw_parts(start, end.offset_from(start) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_is_small_and_carries_the_greeting() {
        let code = guest_code();
        assert!(code.len() < 128, "demo guest grew to {} bytes", code.len());
        let text = DEMO_GREETING.as_bytes();
        assert!(code.windows(text.len()).any(|w| w == text));
    }
}

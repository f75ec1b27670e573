/* Entry of every test guest, as a 64-bit kernel is entered: long mode, paging on,
 * RSI = address of boot_params, RSP = a small boot stack. */
    .section .text.start, "ax"
    .code64
    .global _start
_start:
    mov %rsi, %rdi          /* guest_main(struct boot_params *) */
    call guest_main
1:  mov $0xfe, %al
    outb %al, $0x64
    hlt
    jmp 1b

    .section .note.GNU-stack, "", @progbits

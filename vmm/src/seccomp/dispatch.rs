//! A binary search over system call numbers in front of each program seccompiler builds.
//!
//! Why: when a thread installs a filter, the kernel works out, for every system call number
//! of every architecture it supports (about 900 on x86_64), whether the program allows that
//! call whatever its arguments, by stepping through the program (the "action cache" of
//! Linux 5.11 on). seccompiler lays a program out as one test per call after another, so each
//! of those steps walks most of the program: 100-170 us per install for our lists, measured,
//! and a VMM installs four or five before its guest's first instruction. Behind a balanced
//! search the walk is a dozen instructions and the install cost all but disappears.
//!
//! The search decides what the call number alone decides: a call allowed whatever its
//! arguments returns the matched action, a call not in the list the mismatch action. Only the
//! calls with argument conditions jump on into seccompiler's program, which checks the
//! architecture and number again and then the arguments, exactly as without this front.

use seccompiler::{sock_filter, BpfProgram};

/// What the call number alone decides for one listed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByNumber {
    /// The matched action, whatever the arguments.
    Matched,
    /// Depends on the arguments: seccompiler's program decides.
    ByArguments,
}

/// Classic BPF opcodes (`BPF_LD | BPF_W | BPF_ABS`, `BPF_JMP | BPF_JA`, ...).
const BPF_LD_W_ABS: u16 = 0x20;
pub(super) const BPF_JMP_JA: u16 = 0x05;
pub(super) const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
pub(super) const BPF_RET_K: u16 = 0x06;
/// `struct seccomp_data` offsets.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
pub(super) const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// At most this many calls are tested one after another at the bottom of the search.
const LEAF_CALLS: usize = 4;
/// A conditional jump's offsets are one byte.
const MAX_SHORT_JUMP: usize = u8::MAX as usize;
/// Marks the jumps into seccompiler's program until its position is known.
const TO_ARGUMENT_CHECKS: u32 = u32::MAX;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// `checks` (seccompiler's program for `calls`) behind a binary search over `calls`, which
/// must be sorted by number without repeats. `matched` and `mismatch` are the program's
/// actions, as seccompiler encodes them.
pub fn in_front_of(
    calls: &[(u32, ByNumber)],
    matched: u32,
    mismatch: u32,
    checks: BpfProgram,
) -> BpfProgram {
    debug_assert!(calls.windows(2).all(|w| w[0].0 < w[1].0));
    let mut program = vec![
        stmt(BPF_LD_W_ABS, ARCH_OFFSET),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, NR_OFFSET),
    ];
    program.extend(search(calls, matched, mismatch));
    // seccompiler's program starts right after the search.
    let checks_at = program.len();
    for (at, insn) in program.iter_mut().enumerate() {
        if insn.code == BPF_JMP_JA && insn.k == TO_ARGUMENT_CHECKS {
            insn.k = (checks_at - at - 1) as u32;
        }
    }
    program.extend(checks);
    program
}

/// The search over `calls`, the call number loaded; every path ends in a return or a jump
/// marked [`TO_ARGUMENT_CHECKS`].
fn search(calls: &[(u32, ByNumber)], matched: u32, mismatch: u32) -> Vec<sock_filter> {
    if calls.len() <= LEAF_CALLS {
        let mut code = Vec::with_capacity(calls.len() * 2 + 1);
        for &(nr, by) in calls {
            // Equal: the next instruction decides; otherwise skip it.
            code.push(jump(BPF_JMP_JEQ_K, nr, 0, 1));
            code.push(match by {
                ByNumber::Matched => stmt(BPF_RET_K, matched),
                ByNumber::ByArguments => stmt(BPF_JMP_JA, TO_ARGUMENT_CHECKS),
            });
        }
        code.push(stmt(BPF_RET_K, mismatch));
        return code;
    }
    let (lower, upper) = calls.split_at(calls.len() / 2);
    let lower = search(lower, matched, mismatch);
    let upper_from = upper[0].0;
    let upper = search(upper, matched, mismatch);
    let mut code = Vec::with_capacity(lower.len() + upper.len() + 2);
    // Number >= the upper half's first: jump over the lower half's code, which follows.
    if lower.len() <= MAX_SHORT_JUMP {
        code.push(jump(BPF_JMP_JGE_K, upper_from, lower.len() as u8, 0));
    } else {
        code.push(jump(BPF_JMP_JGE_K, upper_from, 0, 1));
        code.push(stmt(BPF_JMP_JA, lower.len() as u32));
    }
    code.extend(lower);
    code.extend(upper);
    code
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Runs a classic BPF program of the instructions seccomp programs here use on a
    /// `seccomp_data` of (nr, arch, args) and returns its verdict.
    pub fn run(program: &[sock_filter], nr: u32, arch: u32, args: &[u64; 6]) -> u32 {
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let insn = program
                .get(pc)
                .unwrap_or_else(|| panic!("fell off the end at {pc}"));
            pc += 1;
            match insn.code {
                BPF_LD_W_ABS => {
                    acc = match insn.k {
                        NR_OFFSET => nr,
                        ARCH_OFFSET => arch,
                        // args[i] at 16 + 8 i, low then high word (little endian).
                        k @ 16..=63 if k % 4 == 0 => {
                            let arg = args[(k as usize - 16) / 8];
                            if k % 8 == 0 {
                                arg as u32
                            } else {
                                (arg >> 32) as u32
                            }
                        }
                        k => panic!("load of offset {k}"),
                    }
                }
                BPF_JMP_JA => pc += insn.k as usize,
                BPF_JMP_JEQ_K | BPF_JMP_JGE_K => {
                    let taken = if insn.code == BPF_JMP_JEQ_K {
                        acc == insn.k
                    } else {
                        acc >= insn.k
                    };
                    pc += if taken { insn.jt } else { insn.jf } as usize;
                }
                BPF_RET_K => return insn.k,
                code => panic!("instruction {code:#x} at {} not known here", pc - 1),
            }
        }
    }

    /// How many instructions the kernel's action-cache emulation steps through for `nr`
    /// before it reaches a return or a load of something other than the number or the
    /// architecture (where it gives up): the cost of installing the program, per call.
    pub fn cache_steps(program: &[sock_filter], nr: u32) -> usize {
        let mut acc = 0u32;
        let mut pc = 0usize;
        let mut steps = 0;
        while let Some(insn) = program.get(pc) {
            steps += 1;
            pc += 1;
            match insn.code {
                BPF_LD_W_ABS if insn.k == NR_OFFSET => acc = nr,
                BPF_LD_W_ABS if insn.k == ARCH_OFFSET => acc = AUDIT_ARCH_X86_64,
                BPF_JMP_JA => pc += insn.k as usize,
                BPF_JMP_JEQ_K => pc += if acc == insn.k { insn.jt } else { insn.jf } as usize,
                BPF_JMP_JGE_K => pc += if acc >= insn.k { insn.jt } else { insn.jf } as usize,
                _ => break,
            }
        }
        steps
    }

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;

    /// Stands in for seccompiler's program: returns 7 for whatever reaches it.
    fn checks() -> BpfProgram {
        vec![stmt(BPF_RET_K, 7)]
    }

    #[test]
    fn the_search_returns_by_number_and_sends_argument_calls_on() {
        // Enough calls for several levels, and numbers around each.
        let calls: Vec<(u32, ByNumber)> = (0..40)
            .map(|i| {
                let by = if i % 5 == 0 {
                    ByNumber::ByArguments
                } else {
                    ByNumber::Matched
                };
                (3 * i + 1, by)
            })
            .collect();
        let program = in_front_of(&calls, ALLOW, KILL, checks());
        for nr in 0..200 {
            let expected = match calls.iter().find(|c| c.0 == nr) {
                Some((_, ByNumber::Matched)) => ALLOW,
                Some((_, ByNumber::ByArguments)) => 7,
                None => KILL,
            };
            assert_eq!(
                run(&program, nr, AUDIT_ARCH_X86_64, &[0; 6]),
                expected,
                "nr {nr}"
            );
        }
        // x32 calls (bit 30) and other architectures are not in any list.
        assert_eq!(run(&program, 0x4000_0004, AUDIT_ARCH_X86_64, &[0; 6]), KILL);
        assert_eq!(run(&program, 4, 0x4000_0003, &[0; 6]), KILL);
    }

    #[test]
    fn far_halves_are_reached_through_a_long_jump() {
        // Enough argument calls that a lower half outgrows a one-byte jump.
        let calls: Vec<(u32, ByNumber)> = (0..400).map(|nr| (nr, ByNumber::Matched)).collect();
        let program = in_front_of(&calls, ALLOW, KILL, checks());
        assert!(program.len() > 2 * MAX_SHORT_JUMP, "{}", program.len());
        for nr in 0..450 {
            let expected = if nr < 400 { ALLOW } else { KILL };
            assert_eq!(
                run(&program, nr, AUDIT_ARCH_X86_64, &[0; 6]),
                expected,
                "nr {nr}"
            );
            assert!(cache_steps(&program, nr) <= 30, "nr {nr}");
        }
    }
}

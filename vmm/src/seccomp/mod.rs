//! Seccomp filters for the threads of a running VM, one allow list per thread kind
//! ([`allowlist`]). A system call outside a thread's list kills the whole process
//! (`SECCOMP_RET_KILL_PROCESS`): a vCPU thread is treated as compromised once the guest runs,
//! and a killed VMM is better than one that goes on with an attacker's system call.
//!
//! Filters are per thread and permanent. [`Vm::run`](crate::Vm::run) installs them on the
//! threads it creates (vCPUs and, when filtering, a dedicated event-loop thread) before the
//! guest's first instruction; with [`SeccompLevel::AllThreads`] it also filters the calling
//! thread, which a program should ask for only when that thread does nothing else afterwards
//! (the `veil` binary).

mod allowlist;
mod dispatch;

use std::collections::BTreeMap;

use dispatch::ByNumber;
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

/// Which threads get a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompLevel {
    /// No filters (debugging: `veil run --no-seccomp`).
    Off,
    /// The threads the VM creates: vCPUs and the device event loop, which then runs on its own
    /// thread. The thread calling [`Vm::run`](crate::Vm::run) is left alone, so an embedding
    /// program (the shim, tests) can go on doing anything once the VM ends. The library's
    /// default.
    #[default]
    VmThreads,
    /// The VM's threads and the thread calling [`Vm::run`](crate::Vm::run), which gets the
    /// [`ThreadKind::Main`] filter once the VM's threads exist: for a process that only runs
    /// one VM (the `veil` binary).
    AllThreads,
}

/// The kinds of thread with their own allow list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs KVM_RUN and the port/MMIO exits it returns.
    Vcpu,
    /// The device event loop: virtio-blk file I/O, vsock Unix sockets, stdin forwarding.
    EventLoop,
    /// The `veil` main thread (waits for the VM, then tears it down and reports) and its
    /// signal-watching thread.
    Main,
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {kind:?} seccomp filter: {source}")]
    Build {
        kind: ThreadKind,
        source: seccompiler::BackendError,
    },
    #[error("cannot install the {kind:?} seccomp filter: {source}")]
    Install {
        kind: ThreadKind,
        source: seccompiler::Error,
    },
}

/// The compiled filter for one kind of thread: its allow list (anything else kills the
/// process) and, for the vCPU and event-loop threads, ahead of it (chained into one program)
/// a part that makes `open` and `openat` fail with EACCES. The allow list lets those through
/// on purpose: glibc's malloc opens `/proc/sys/vm/overcommit_memory` once, the first time it
/// shrinks a thread arena's heap, and copes with the failure; killing the VMM for that would
/// make any free() a hazard. A compromised thread still cannot open anything.
#[derive(Debug, Clone)]
pub struct ThreadFilter {
    programs: Vec<BpfProgram>,
}

/// Builds the filter for one kind of thread.
pub fn filter(kind: ThreadKind) -> Result<ThreadFilter, SeccompError> {
    let build = |source| SeccompError::Build { kind, source };
    let list = match kind {
        ThreadKind::Vcpu => allowlist::vcpu(),
        ThreadKind::EventLoop => allowlist::event_loop(),
        ThreadKind::Main => allowlist::main_thread(),
    }
    .map_err(build)?;
    let allowed = compile(list, SeccompAction::KillProcess, SeccompAction::Allow).map_err(build)?;
    if kind == ThreadKind::Main {
        return Ok(ThreadFilter {
            programs: vec![allowed],
        });
    }
    let opens = vec![(libc::SYS_open, Vec::new()), (libc::SYS_openat, Vec::new())];
    let refuse_opens = compile(
        opens,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
    )
    .map_err(build)?;
    Ok(ThreadFilter {
        programs: vec![chain(refuse_opens, allowed)],
    })
}

/// One program that runs `first` and, where `first` would allow the call, `then`: the two
/// verdicts of two stacked filters, but one program for the kernel to check and JIT when a
/// thread installs it (each costs it a fixed ~35 us on the hosts measured, on the boot path).
/// `first`'s "allow" returns become forward jumps to `then`'s first instruction; its other
/// returns stay, so its stricter verdicts win as they do when stacked.
fn chain(first: BpfProgram, then: BpfProgram) -> BpfProgram {
    use dispatch::{BPF_JMP_JA, BPF_RET_K};
    let len = first.len();
    let mut out: BpfProgram = first
        .into_iter()
        .enumerate()
        .map(|(i, mut insn)| {
            if insn.code == BPF_RET_K && insn.k == libc::SECCOMP_RET_ALLOW {
                insn.code = BPF_JMP_JA;
                // Relative to the next instruction: lands on `then`'s first.
                insn.k = (len - 1 - i) as u32;
                insn.jt = 0;
                insn.jf = 0;
            }
            insn
        })
        .collect();
    out.extend(then);
    out
}

/// The list by call: `None` for a call allowed whatever its arguments (an unconditional
/// entry wins), otherwise every entry's conditions as alternatives.
fn merge(list: Vec<allowlist::Entry>) -> BTreeMap<i64, Option<Vec<SeccompRule>>> {
    let mut merged: BTreeMap<i64, Option<Vec<_>>> = BTreeMap::new();
    for (nr, conditions) in list {
        let entry = merged.entry(nr).or_insert_with(|| Some(Vec::new()));
        match (entry.as_mut(), conditions.is_empty()) {
            (_, true) => *entry = None,
            (Some(rules), false) => rules.extend(conditions),
            (None, false) => {}
        }
    }
    merged
}

fn compile(
    list: Vec<allowlist::Entry>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, seccompiler::BackendError> {
    let merged = merge(list);
    let calls: Vec<(u32, ByNumber)> = merged
        .iter()
        .map(|(&nr, rules)| {
            let by = match rules {
                None => ByNumber::Matched,
                Some(_) => ByNumber::ByArguments,
            };
            (nr as u32, by)
        })
        .collect();
    // seccompiler's program gets only the calls with conditions: the search in front decides
    // all others, and the fewer instructions the kernel has to check and compile, the faster
    // a thread installs the filter.
    let conditional: BTreeMap<i64, Vec<_>> = merged
        .into_iter()
        .filter_map(|(nr, rules)| Some((nr, rules?)))
        .collect();
    let checks: BpfProgram = if conditional.is_empty() {
        Vec::new()
    } else {
        SeccompFilter::new(
            conditional,
            mismatch.clone(),
            matched.clone(),
            TargetArch::x86_64,
        )?
        .try_into()?
    };
    Ok(dispatch::in_front_of(
        &calls,
        matched.into(),
        mismatch.into(),
        checks,
    ))
}

/// The filters for every kind of thread, compiled once before any is installed, so that a
/// bad list fails before a thread starts.
#[derive(Debug, Clone)]
pub struct Filters {
    pub vcpu: ThreadFilter,
    pub event_loop: ThreadFilter,
    pub main: ThreadFilter,
}

impl Filters {
    pub fn new() -> Result<Self, SeccompError> {
        Ok(Self {
            vcpu: filter(ThreadKind::Vcpu)?,
            event_loop: filter(ThreadKind::EventLoop)?,
            main: filter(ThreadKind::Main)?,
        })
    }

    /// The filter for `kind`.
    pub fn get(&self, kind: ThreadKind) -> &ThreadFilter {
        match kind {
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::EventLoop => &self.event_loop,
            ThreadKind::Main => &self.main,
        }
    }
}

/// Installs `filter` (the one for `kind`) on the calling thread, for good. seccompiler sets
/// `no_new_privs` on the thread first, as seccomp requires without CAP_SYS_ADMIN.
pub fn apply(kind: ThreadKind, filter: &ThreadFilter) -> Result<(), SeccompError> {
    // The allow list last: installing a program calls prctl and seccomp, which it forbids.
    for program in filter.programs.iter().rev() {
        seccompiler::apply_filter(program)
            .map_err(|source| SeccompError::Install { kind, source })?;
    }
    Ok(())
}

/// Builds and installs the filter for `kind` on the calling thread.
pub fn apply_to_current_thread(kind: ThreadKind) -> Result<(), SeccompError> {
    apply(kind, &filter(kind)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use seccompiler::sock_filter;

    use dispatch::{AUDIT_ARCH_X86_64, BPF_JMP_JA, BPF_JMP_JEQ_K, BPF_RET_K};

    type List = fn() -> Result<Vec<allowlist::Entry>, seccompiler::BackendError>;

    /// An architecture whose calls every program refuses (i386).
    const OTHER_ARCH: u32 = 0x4000_0003;

    /// The values `reference` compares arguments with, and some it does not.
    fn compared_values(reference: &[sock_filter]) -> Vec<u64> {
        let mut values: Vec<u64> = reference
            .iter()
            .filter(|i| i.code == BPF_JMP_JEQ_K)
            .map(|i| u64::from(i.k))
            .collect();
        values.extend([0, 1, 0xdead_beef, u64::MAX]);
        values.sort_unstable();
        values.dedup();
        values
    }

    /// seccompiler's own program for `list`, without the search in front.
    fn linear(list: Vec<allowlist::Entry>) -> BpfProgram {
        let rules = merge(list)
            .into_iter()
            .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
            .collect();
        SeccompFilter::new(
            rules,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
        .unwrap()
        .try_into()
        .unwrap()
    }

    /// Every call number, with every value the lists compare arguments with, gets the same
    /// verdict from the program with the search in front as from seccompiler's alone; and
    /// every call the number alone decides is decided within a few dozen steps of the
    /// kernel's action-cache emulation (the cost of installing the filter).
    #[test]
    fn the_search_in_front_keeps_every_verdict_and_decides_numbers_quickly() {
        let lists: [(&str, List); 3] = [
            ("vcpu", allowlist::vcpu),
            ("event loop", allowlist::event_loop),
            ("main", allowlist::main_thread),
        ];
        for (name, list) in lists {
            let fast = compile(
                list().unwrap(),
                SeccompAction::KillProcess,
                SeccompAction::Allow,
            )
            .unwrap();
            let reference = linear(list().unwrap());
            let conditional: Vec<i64> = merge(list().unwrap())
                .into_iter()
                .filter_map(|(nr, rules)| rules.map(|_| nr))
                .collect();
            assert!(!conditional.is_empty(), "{name}: no call with conditions");
            let values = compared_values(&reference);
            for nr in (0..480u32).chain([0x4000_0000, 0x4000_0010, 0x4000_0200, u32::MAX]) {
                let is_conditional = conditional.contains(&i64::from(nr));
                for arch in [AUDIT_ARCH_X86_64, OTHER_ARCH] {
                    for &v in &values {
                        let args = [v, v, v, v, v, v];
                        assert_eq!(
                            dispatch::tests::run(&fast, nr, arch, &args),
                            dispatch::tests::run(&reference, nr, arch, &args),
                            "{name}: nr {nr} arch {arch:#x} args {v:#x}"
                        );
                        if !is_conditional {
                            break;
                        }
                    }
                }
                if !is_conditional {
                    let steps = dispatch::tests::cache_steps(&fast, nr);
                    assert!(steps <= 32, "{name}: nr {nr} takes {steps} steps");
                }
            }
            assert!(
                fast.len() < reference.len(),
                "{name}: {} >= {}",
                fast.len(),
                reference.len()
            );
        }
    }

    /// The one program a vCPU or event-loop thread installs decides every call as the two
    /// stacked filters it replaces would: `open`/`openat` fail with EACCES, everything else
    /// as seccompiler's allow list alone decides it.
    #[test]
    fn each_threads_program_gives_the_stacked_verdicts() {
        let kinds: [(ThreadKind, List); 2] = [
            (ThreadKind::Vcpu, allowlist::vcpu),
            (ThreadKind::EventLoop, allowlist::event_loop),
        ];
        let eacces = libc::SECCOMP_RET_ERRNO | libc::EACCES as u32;
        for (kind, list) in kinds {
            let filter = filter(kind).unwrap();
            assert_eq!(filter.programs.len(), 1, "{kind:?}");
            let program = &filter.programs[0];
            let reference = linear(list().unwrap());
            let values = compared_values(&reference);
            for nr in 0..480u32 {
                for arch in [AUDIT_ARCH_X86_64, OTHER_ARCH] {
                    for &v in &values {
                        let args = [v; 6];
                        let expected = if arch == AUDIT_ARCH_X86_64
                            && [libc::SYS_open, libc::SYS_openat].contains(&i64::from(nr))
                        {
                            eacces
                        } else {
                            dispatch::tests::run(&reference, nr, arch, &args)
                        };
                        assert_eq!(
                            dispatch::tests::run(program, nr, arch, &args),
                            expected,
                            "{kind:?}: nr {nr} arch {arch:#x} args {v:#x}"
                        );
                    }
                }
            }
        }
    }

    /// Whatever the first program allows continues at the second's first instruction; its
    /// other verdicts stay returns.
    #[test]
    fn chained_programs_allow_only_through_the_second() {
        let opens = vec![(libc::SYS_open, Vec::new()), (libc::SYS_openat, Vec::new())];
        let first = compile(
            opens,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EACCES as u32),
        )
        .unwrap();
        let second = compile(
            allowlist::vcpu().unwrap(),
            SeccompAction::KillProcess,
            SeccompAction::Allow,
        )
        .unwrap();
        let (first_len, second_len) = (first.len(), second.len());
        let is_ret = |i: &sock_filter| i.code == BPF_RET_K;
        let allows: Vec<usize> = (0..first_len)
            .filter(|&at| is_ret(&first[at]) && first[at].k == libc::SECCOMP_RET_ALLOW)
            .collect();
        let refusals = first.iter().filter(|i| is_ret(i)).count() - allows.len();
        assert!(!allows.is_empty() && refusals >= 1, "{first:?}");
        let chained = chain(first.clone(), second.clone());
        assert_eq!(chained.len(), first_len + second_len);
        assert_eq!(&chained[first_len..], &second[..]);
        for (at, insn) in chained[..first_len].iter().enumerate() {
            if allows.contains(&at) {
                // BPF_JMP | BPF_JA, relative to the next instruction: onto the second's start.
                assert_eq!(insn.code, BPF_JMP_JA, "at {at}");
                assert_eq!(at + 1 + insn.k as usize, first_len, "jump at {at}");
            } else {
                // Everything else, the refusals (EACCES, the wrong-architecture kill)
                // included, is as compiled.
                assert_eq!(insn, &first[at], "at {at}");
            }
        }
    }
}

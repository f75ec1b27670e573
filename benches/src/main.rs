//! `cargo run --release -p veil-benches -- [--quick] [--out DIR]`: builds `veil` and the floor
//! (release), assembles the tiny guests, runs every section and writes
//! `DIR/bench-<time>.json` and `DIR/bench-<time>.md`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use veil_benches::bench::{Bench, Plan};
use veil_benches::guest::{self, TinyGuest};
use veil_benches::machine;
use veil_benches::report::{rfc3339_utc, Report, SCHEMA};
use veil_benches::sections;
use veil_benches::vmm::Tools;

/// Veil's benchmark harness: boot latency, memory and density against a KVM floor program and
/// QEMU microvm, in one run.
#[derive(Debug, Parser)]
#[command(name = "veil-benches", version)]
struct Args {
    /// Fewer repetitions: finishes in under two minutes (for CI).
    #[arg(long)]
    quick: bool,
    /// Where the JSON and Markdown reports go [default: <workspace>/target/bench-results].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Run only these sections (comma separated).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    only: Vec<String>,
    /// The `veil` binary to measure; by default it is built as it ships (veil/build-dist.sh).
    #[arg(long, value_name = "PATH")]
    veil: Option<PathBuf>,
    /// The floor binary; by default it is built (release) from this workspace.
    #[arg(long, value_name = "PATH")]
    floor: Option<PathBuf>,
    /// QEMU to compare with.
    #[arg(long, value_name = "PATH", default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// The guest kernel for the Linux boot section [default: <workspace>/target/guest-kernel/vmlinux].
    #[arg(long, value_name = "PATH")]
    vmlinux: Option<PathBuf>,
    /// The guest initramfs for the nested section
    /// [default: <workspace>/target/guest-initramfs/initramfs.cpio.gz].
    #[arg(long, value_name = "PATH")]
    initramfs: Option<PathBuf>,
    /// Internal: the nested section's measurements, run inside L1 from the plan in this file.
    #[arg(long, value_name = "PLAN", hide = true)]
    nested_inner: Option<PathBuf>,
    /// Internal: the nested pod-start measurements, run inside L1 from the plan in this file.
    #[arg(long, value_name = "PLAN", hide = true)]
    pod_start_inner: Option<PathBuf>,
    /// Internal: the nested network measurements, run inside L1 from the plan in this file.
    #[arg(long, value_name = "PLAN", hide = true)]
    net_inner: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error("unknown section '{0}' (known: {known})", known = sections::names().join(", "))]
    UnknownSection(String),
    #[error("cannot run cargo to build {what}: {source}")]
    CargoSpawn {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("building {what} failed ({status})")]
    CargoFailed {
        what: &'static str,
        status: std::process::ExitStatus,
    },
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Guest(#[from] guest::GuestBuildError),
    #[error("measurements failed in: {sections} (see {report})", report = .report.display())]
    Failed { sections: String, report: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The workspace this crate belongs to.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds `veil` as it ships (`veil/build-dist.sh`: static-pie, `dist` profile) and
/// `kvm-floor` (`cargo build --release`), so the figures are for the current code; returns
/// veil's path. One package per cargo invocation, as `cargo build -p veil` and
/// `cargo run -p veil-benches` do: building both at once unifies dependency features
/// differently and rebuilds them.
fn build_binaries() -> Result<PathBuf, MainError> {
    let script = workspace_root().join("veil/build-dist.sh");
    let out = Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|source| MainError::CargoSpawn {
            what: "veil",
            source,
        })?;
    if !out.status.success() {
        return Err(MainError::CargoFailed {
            what: "veil",
            status: out.status,
        });
    }
    let veil = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "-p",
            "veil-benches",
            "--bin",
            "kvm-floor",
        ])
        .status()
        .map_err(|source| MainError::CargoSpawn {
            what: "kvm-floor",
            source,
        })?;
    if !status.success() {
        return Err(MainError::CargoFailed {
            what: "kvm-floor",
            status,
        });
    }
    Ok(veil)
}

/// QEMU's full path, when it is installed.
fn find_qemu(qemu: &Path) -> Option<PathBuf> {
    if qemu.components().count() > 1 {
        return qemu.is_file().then(|| qemu.to_owned());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(qemu))
        .find(|p| p.is_file())
}

fn run(args: Args) -> Result<PathBuf, MainError> {
    for name in &args.only {
        if !sections::names().contains(&name.as_str()) {
            return Err(MainError::UnknownSection(name.clone()));
        }
    }
    let built_veil = if args.veil.is_none() || args.floor.is_none() {
        Some(build_binaries()?)
    } else {
        None
    };
    let release = target_dir().join("release");
    let tools = Tools {
        veil: args.veil.or(built_veil).expect("built when not given"),
        floor: args.floor.unwrap_or_else(|| release.join("kvm-floor")),
        qemu: find_qemu(&args.qemu),
    };
    let scratch = tempfile::tempdir().map_err(|source| MainError::Dir {
        path: std::env::temp_dir(),
        source,
    })?;
    let exit_guest = guest::build(TinyGuest::Exit, scratch.path())?;
    let idle_guest = guest::build(TinyGuest::Idle, scratch.path())?;
    let cores = machine::cores();
    let bench = Bench {
        exit_guest,
        idle_guest,
        vmlinux: args
            .vmlinux
            .unwrap_or_else(|| target_dir().join("guest-kernel/vmlinux")),
        initramfs: args
            .initramfs
            .unwrap_or_else(|| target_dir().join("guest-initramfs/initramfs.cpio.gz")),
        cores,
        plan: if args.quick {
            Plan::quick(cores)
        } else {
            Plan::full(cores)
        },
        tools,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut report = Report {
        schema: SCHEMA,
        started_at: rfc3339_utc(now),
        quick: args.quick,
        machine: machine::machine(),
        versions: machine::versions(&bench.tools.veil, bench.tools.qemu.as_deref()),
        sections: Vec::new(),
    };
    for entry in sections::ALL {
        if !args.only.is_empty() && !args.only.iter().any(|n| n == entry.name) {
            continue;
        }
        eprintln!("veil-benches: running {}", entry.name);
        report.sections.push((entry.run)(&bench));
    }
    let out = args
        .out
        .unwrap_or_else(|| target_dir().join("bench-results"));
    std::fs::create_dir_all(&out).map_err(|source| MainError::Dir {
        path: out.clone(),
        source,
    })?;
    let stem = format!("bench-{}", report.started_at.replace(':', ""));
    let json_path = out.join(format!("{stem}.json"));
    let json = serde_json::to_string_pretty(&report).expect("the report serialises");
    write(&json_path, &json)?;
    let markdown = report.markdown();
    write(&out.join(format!("{stem}.md")), &markdown)?;
    println!("{markdown}");
    let failed: Vec<String> = report.failed().iter().map(|s| s.name.to_string()).collect();
    if !failed.is_empty() {
        return Err(MainError::Failed {
            sections: failed.join("; "),
            report: json_path,
        });
    }
    Ok(json_path)
}

fn write(path: &Path, text: &str) -> Result<(), MainError> {
    std::fs::write(path, text).map_err(|source| MainError::Write {
        path: path.to_owned(),
        source,
    })
}

fn main() -> ExitCode {
    if let Ok(filter) = std::env::var("VEIL_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let args = Args::parse();
    if let Some(plan) = &args.nested_inner {
        return match veil_benches::nested::inner_main(plan) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("veil-benches: nested measurements: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(plan) = &args.net_inner {
        return match veil_benches::net_nested::inner_main(plan) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("veil-benches: nested network measurements: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(plan) = &args.pod_start_inner {
        return match veil_benches::nested_pod::inner_main(plan) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("veil-benches: nested pod-start measurements: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(args) {
        Ok(path) => {
            eprintln!("veil-benches: wrote {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("veil-benches: error: {e}");
            ExitCode::FAILURE
        }
    }
}

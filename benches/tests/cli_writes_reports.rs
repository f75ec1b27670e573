//! The harness binary end to end, on sections that need no VM: it writes one JSON and one
//! Markdown report per run, with the machine, the versions and every section it was asked for;
//! a section skipped for a stated reason leaves the run a success, a failed measurement does
//! not.

use std::process::Command;

#[test]
fn writes_json_and_markdown_for_the_selected_sections() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_veil-benches"))
        .args(["--quick", "--only", "kernel"])
        .args(["--veil", "/bin/true", "--floor", "/bin/true"])
        .args(["--vmlinux", "/nonexistent/vmlinux"])
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    let mut files: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(files[0].extension().unwrap(), "json");
    assert_eq!(files[1].extension().unwrap(), "md");
    assert_eq!(files[0].file_stem(), files[1].file_stem());

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    assert_eq!(json["schema"], "veil-benches/1");
    assert_eq!(json["quick"], true);
    assert!(json["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(!json["machine"]["kernel"].as_str().unwrap().is_empty());
    let sections = json["sections"].as_array().unwrap();
    let statuses: Vec<&str> = sections
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["skipped"]);
    assert!(sections[0]["reason"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/vmlinux"));

    let md = std::fs::read_to_string(&files[1]).unwrap();
    assert!(
        md.contains("Skipped: no guest kernel at /nonexistent/vmlinux"),
        "{md}"
    );
}

#[test]
fn a_failed_measurement_fails_the_run_but_still_writes_the_reports() {
    let out = tempfile::tempdir().unwrap();
    // `true` as veil: the device guests print nothing, so no figure can be produced.
    let run = Command::new(env!("CARGO_BIN_EXE_veil-benches"))
        .args(["--quick", "--only", "devices"])
        .args(["--veil", "/bin/true", "--floor", "/bin/true"])
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(!run.status.success(), "{run:?}");
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("measurements failed in: Devices"), "{err}");
    let json = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("the JSON report is written even when a measurement failed");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let devices = &json["sections"][0];
    assert_eq!(devices["status"], "failed");
    assert!(
        devices["reason"]
            .as_str()
            .unwrap()
            .contains("virtio-blk run"),
        "{devices}"
    );
    assert_eq!(devices["figures"].as_array().unwrap().len(), 0);
}

#[test]
fn unknown_section_is_refused_by_name() {
    let run = Command::new(env!("CARGO_BIN_EXE_veil-benches"))
        .args([
            "--only",
            "boot,warp-speed",
            "--veil",
            "/bin/true",
            "--floor",
            "/bin/true",
        ])
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("unknown section 'warp-speed'"), "{err}");
}

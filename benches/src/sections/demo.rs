//! `veil demo`: spawn -> the demo guest's line as seen from outside, and the stage timings the
//! demo prints itself (process start -> VM created -> first vCPU run -> first console byte ->
//! torn down).
//!
//! The guest's boot-timer write is the `boot timer` stage now that veil prints it:
//! `parse_stages` picks up any `process start -> ...` line by its label.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::bench::{expect_exit, Bench, Failures, RunError, TINY_TIMEOUT};
use crate::launch::{ms_between, Launched};
use crate::report::Section;

/// The line the built-in demo guest prints.
pub const DEMO_GREETING: &str = "Hello from the Veil demo guest";

/// The stage lines of `veil demo`'s report: `  process start -> LABEL   1.234 ms` (or
/// `never`). Returns (label, milliseconds) for each stage that was reached.
pub fn parse_stages(lines: &[String]) -> Vec<(String, f64)> {
    lines
        .iter()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("process start -> ")?;
            let value = rest.strip_suffix(" ms")?;
            let (label, number) = value.trim_end().rsplit_once(char::is_whitespace)?;
            let ms: f64 = number.parse().ok()?;
            Some((label.trim().to_string(), ms))
        })
        .collect()
}

struct Run {
    line_ms: f64,
    stages: Vec<(String, f64)>,
}

fn one_run(b: &Bench) -> Result<Run, RunError> {
    let mut vm = Launched::spawn(b.tools.veil_demo())?;
    let line_at = vm.wait_for_line(DEMO_GREETING, TINY_TIMEOUT)?;
    expect_exit(&mut vm, 0)?;
    let rest = vm.remaining_lines(Duration::from_secs(2));
    Ok(Run {
        line_ms: ms_between(vm.spawned_at, line_at),
        stages: parse_stages(&rest),
    })
}

pub fn run(b: &Bench) -> Section {
    let mut section = Section::new("veil demo: built-in guest, stage timings");
    let mut line_ms = Vec::new();
    // Stage order as first printed, values per stage.
    let mut order: Vec<String> = Vec::new();
    let mut stages: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut failures = Failures::default();
    for _ in 0..b.plan.demo_runs {
        match one_run(b) {
            Ok(r) => {
                line_ms.push(r.line_ms);
                for (label, ms) in r.stages {
                    if !order.contains(&label) {
                        order.push(label.clone());
                    }
                    stages.entry(label).or_default().push(ms);
                }
            }
            Err(e) => failures.add("veil demo", e),
        }
    }
    section.figure(
        "spawn -> demo guest line (measured by the harness)",
        "ms",
        &line_ms,
    );
    for label in &order {
        section.figure(
            format!("process start -> {label} (reported by veil)"),
            "ms",
            &stages[label],
        );
    }
    section.note(
        "veil's own stages start at its main(), after exec and dynamic linking; the harness's figure starts before fork",
    );
    for n in failures.notes() {
        section.note(n);
    }
    section
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_stage_lines() {
        let out: Vec<String> = [
            "Hello from the Veil demo guest\n",
            "veil demo: guest ended: guest reset\n",
            "  process start -> VM created       1.250 ms\n",
            "  process start -> first vCPU run   never\n",
            "  process start -> first console    12.5 ms\n",
            "  process start -> VM torn down     x ms\n",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            parse_stages(&out),
            [
                ("VM created".to_string(), 1.25),
                ("first console".to_string(), 12.5)
            ]
        );
    }
}

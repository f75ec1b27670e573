//! What one run of the harness found, as JSON (one file per run) and as a Markdown table.

use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::Summary;

/// The whole run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Format of this file; bumped when a field changes meaning.
    pub schema: &'static str,
    /// UTC start of the run, RFC 3339.
    pub started_at: String,
    pub quick: bool,
    pub machine: Machine,
    pub versions: Versions,
    pub sections: Vec<Section>,
}

/// The schema identifier written into every report.
pub const SCHEMA: &str = "veil-benches/1";

/// The host the figures were measured on.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    /// KVM modules loaded (e.g. `kvm`, `kvm_intel`, `kvm_pvm`): tells hardware from software KVM.
    pub kvm_modules: Vec<String>,
}

/// Versions of what was measured.
#[derive(Debug, Serialize)]
pub struct Versions {
    pub veil: String,
    pub qemu: String,
    pub harness: &'static str,
}

/// One group of figures (boot latency, memory, ...).
#[derive(Debug, Serialize)]
pub struct Section {
    pub name: &'static str,
    #[serde(flatten)]
    pub status: Status,
    pub figures: Vec<Figure>,
    pub ratios: Vec<Ratio>,
    /// Figures of a section that ran but could not be produced here, each with why.
    pub skipped: Vec<SkippedFigure>,
    /// How the figures were obtained, for the reader of the table.
    pub notes: Vec<String>,
}

/// Whether a section ran.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum Status {
    Ran,
    /// Could have run, but something it needs is missing here (named in the reason).
    Skipped(String),
    /// Waits for a part of Veil that does not exist yet.
    NotYet(String),
    /// A measurement that should work here failed (named in the reason): the harness exits
    /// non-zero. Figures measured before the failure are kept.
    Failed(String),
}

/// One measured quantity.
#[derive(Debug, Serialize)]
pub struct Figure {
    pub name: String,
    pub unit: &'static str,
    #[serde(flatten)]
    pub summary: Summary,
}

/// A figure the section would report but cannot produce here.
#[derive(Debug, Serialize)]
pub struct SkippedFigure {
    pub name: String,
    pub reason: String,
}

/// A comparison of two figures' medians from the same run.
#[derive(Debug, Serialize)]
pub struct Ratio {
    pub name: String,
    pub value: f64,
    /// The goal from issue 6, when there is one: the ratio should be at most this.
    pub target_at_most: Option<f64>,
    /// ... or at least this.
    pub target_at_least: Option<f64>,
}

impl Section {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            status: Status::Ran,
            figures: Vec::new(),
            ratios: Vec::new(),
            skipped: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// A section that did not run, and why.
    pub fn not_run(name: &'static str, status: Status) -> Self {
        Self {
            status,
            ..Self::new(name)
        }
    }

    /// Adds a figure if there is at least one sample; returns its summary.
    pub fn figure(
        &mut self,
        name: impl Into<String>,
        unit: &'static str,
        samples: &[f64],
    ) -> Option<Summary> {
        let summary = Summary::of(samples)?;
        self.figures.push(Figure {
            name: name.into(),
            unit,
            summary,
        });
        Some(summary)
    }

    pub fn ratio(
        &mut self,
        name: impl Into<String>,
        value: Option<f64>,
        target_at_most: Option<f64>,
    ) {
        if let Some(value) = value {
            self.ratios.push(Ratio {
                name: name.into(),
                value,
                target_at_most,
                target_at_least: None,
            });
        }
    }

    /// A ratio whose goal is a lower bound.
    pub fn ratio_at_least(&mut self, name: impl Into<String>, value: Option<f64>, target: f64) {
        if let Some(value) = value {
            self.ratios.push(Ratio {
                name: name.into(),
                value,
                target_at_most: None,
                target_at_least: Some(target),
            });
        }
    }

    /// A figure this section cannot produce here, and why.
    pub fn skip(&mut self, name: impl Into<String>, reason: impl Into<String>) {
        self.skipped.push(SkippedFigure {
            name: name.into(),
            reason: reason.into(),
        });
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// Marks the section failed (keeping the first reason) but keeps its figures.
    pub fn fail(&mut self, why: impl Into<String>) {
        if !matches!(self.status, Status::Failed(_)) {
            self.status = Status::Failed(why.into());
        }
    }
}

impl Report {
    /// The sections whose measurements failed: a run with any of them is not a success.
    pub fn failed(&self) -> Vec<&Section> {
        self.sections
            .iter()
            .filter(|s| matches!(s.status, Status::Failed(_)))
            .collect()
    }
}

fn number(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else if x.abs() >= 1.0 || x == 0.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

impl Report {
    /// The Markdown the README shows: one table per section.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let _ = writeln!(
            md,
            "Run {} ({}) on {} ({} cores), Linux {}, KVM modules: {}; veil {}, {}.\n",
            self.started_at,
            if self.quick { "quick" } else { "full" },
            m.cpu_model,
            m.cores,
            m.kernel,
            m.kvm_modules.join(", "),
            self.versions.veil,
            self.versions.qemu
        );
        for s in &self.sections {
            let _ = writeln!(md, "### {}\n", s.name);
            match &s.status {
                Status::Ran => {}
                Status::Skipped(why) => {
                    let _ = writeln!(md, "Skipped: {why}\n");
                }
                Status::NotYet(why) => {
                    let _ = writeln!(md, "Not measured yet: {why}\n");
                }
                Status::Failed(why) => {
                    let _ = writeln!(md, "**Failed**: {why}\n");
                }
            }
            if !s.figures.is_empty() {
                md.push_str(
                    "| figure | unit | n | min | median | max |\n|---|---|---|---|---|---|\n",
                );
                for f in &s.figures {
                    let x = &f.summary;
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} | {} | {} |",
                        f.name,
                        f.unit,
                        x.n,
                        number(x.min),
                        number(x.median),
                        number(x.max)
                    );
                }
                md.push('\n');
            }
            for r in &s.ratios {
                let verdict = |met: bool| if met { "met" } else { "not met" };
                let target = match (r.target_at_most, r.target_at_least) {
                    (Some(t), _) => {
                        format!(" (target <= {}: {})", number(t), verdict(r.value <= t))
                    }
                    (None, Some(t)) => {
                        format!(" (target >= {}: {})", number(t), verdict(r.value >= t))
                    }
                    (None, None) => String::new(),
                };
                let _ = writeln!(md, "- {}: **{}**{target}", r.name, number(r.value));
            }
            for k in &s.skipped {
                let _ = writeln!(md, "- skipped: {}: {}", k.name, k.reason);
            }
            for n in &s.notes {
                let _ = writeln!(md, "- {n}");
            }
            if !s.ratios.is_empty() || !s.notes.is_empty() || !s.skipped.is_empty() {
                md.push('\n');
            }
        }
        md
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch (proleptic Gregorian calendar).
pub fn rfc3339_utc(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut boot = Section::new("boot latency");
        boot.figure("veil: spawn -> line", "ms", &[2.0, 4.0, 3.0]);
        boot.figure("nothing", "ms", &[]);
        boot.ratio("veil/floor", Some(1.25), Some(1.5));
        boot.ratio("veil/qemu", Some(0.2), Some(0.1));
        boot.ratio("missing", None, None);
        boot.ratio_at_least("digest/openssl", Some(0.5), 0.9);
        boot.skip("random 4 KiB", "no guest mode");
        Report {
            schema: SCHEMA,
            started_at: rfc3339_utc(0),
            quick: true,
            machine: Machine {
                cpu_model: "Test CPU".into(),
                cores: 2,
                kernel: "6.1.0".into(),
                kvm_modules: vec!["kvm".into()],
            },
            versions: Versions {
                veil: "veil 0.1.0".into(),
                qemu: "QEMU 7.2".into(),
                harness: "0.1.0",
            },
            sections: vec![
                boot,
                Section::not_run("devices", Status::NotYet("no virtio-blk".into())),
                Section::not_run("kernel", Status::Skipped("no vmlinux".into())),
            ],
        }
    }

    #[test]
    fn json_shape() {
        let json = serde_json::to_value(report()).unwrap();
        assert_eq!(json["schema"], "veil-benches/1");
        assert_eq!(json["machine"]["cores"], 2);
        let boot = &json["sections"][0];
        assert_eq!(boot["status"], "ran");
        assert!(boot.get("reason").is_none());
        let figures = boot["figures"].as_array().unwrap();
        assert_eq!(figures.len(), 1, "a figure without samples is left out");
        let f = &figures[0];
        assert_eq!(
            (&f["unit"], &f["n"], &f["min"], &f["median"], &f["max"]),
            (
                &"ms".into(),
                &3.into(),
                &2.0.into(),
                &3.0.into(),
                &4.0.into()
            )
        );
        assert_eq!(boot["ratios"].as_array().unwrap().len(), 3);
        assert_eq!(boot["ratios"][2]["target_at_least"], 0.9);
        assert_eq!(boot["skipped"][0]["reason"], "no guest mode");
        assert_eq!(json["sections"][1]["status"], "not_yet");
        assert_eq!(json["sections"][1]["reason"], "no virtio-blk");
        assert_eq!(json["sections"][2]["status"], "skipped");
    }

    #[test]
    fn markdown_has_a_row_per_figure_and_judges_targets() {
        let md = report().markdown();
        assert!(
            md.contains("| veil: spawn -> line | ms | 3 | 2.00 | 3.00 | 4.00 |"),
            "{md}"
        );
        assert!(
            md.contains("veil/floor: **1.25** (target <= 1.50: met)"),
            "{md}"
        );
        assert!(
            md.contains("veil/qemu: **0.200** (target <= 0.100: not met)"),
            "{md}"
        );
        assert!(
            md.contains("digest/openssl: **0.500** (target >= 0.900: not met)"),
            "{md}"
        );
        assert!(
            md.contains("- skipped: random 4 KiB: no guest mode"),
            "{md}"
        );
        assert!(md.contains("Not measured yet: no virtio-blk"), "{md}");
        assert!(md.contains("Skipped: no vmlinux"), "{md}");
    }

    #[test]
    fn a_failed_section_fails_the_run_and_keeps_its_figures() {
        let mut r = report();
        assert!(r.failed().is_empty());
        let mut s = Section::new("devices");
        s.figure("blk write", "MiB/s", &[1.0]);
        s.fail("guest printed FAIL");
        s.fail("second reason is not kept");
        r.sections.push(s);
        assert_eq!(r.failed().len(), 1);
        let md = r.markdown();
        assert!(md.contains("**Failed**: guest printed FAIL"), "{md}");
        assert!(md.contains("| blk write | MiB/s | 1 |"), "{md}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["sections"][3]["status"], "failed");
        assert_eq!(json["sections"][3]["reason"], "guest printed FAIL");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        // 2000-02-29 12:34:56 UTC, a leap day in a century leap year.
        assert_eq!(rfc3339_utc(951_827_696), "2000-02-29T12:34:56Z");
        // 2026-11-28 00:00:00 UTC.
        assert_eq!(rfc3339_utc(1_795_824_000), "2026-11-28T00:00:00Z");
    }
}

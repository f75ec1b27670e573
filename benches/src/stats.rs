//! Summaries of repeated measurements: these machines are noisy, so every figure is reported
//! as min / median / max over its runs, and comparisons as ratios of medians.

use serde::Serialize;

/// min / median / max of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises `samples`, ignoring NaNs; `None` when nothing is left.
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Self {
            n,
            min: sorted[0],
            median,
            max: sorted[n - 1],
        })
    }
}

/// `a / b` of two medians, when both exist and `b` is not zero.
pub fn median_ratio(a: Option<&Summary>, b: Option<&Summary>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b.median != 0.0 => Some(a.median / b.median),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_and_even_counts() {
        let s = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.n, s.min, s.median, s.max), (3, 1.0, 3.0, 5.0));
        let s = Summary::of(&[4.0, 1.0, 3.0, 10.0]).unwrap();
        assert_eq!((s.n, s.min, s.median, s.max), (4, 1.0, 3.5, 10.0));
        let s = Summary::of(&[7.5]).unwrap();
        assert_eq!((s.min, s.median, s.max), (7.5, 7.5, 7.5));
    }

    #[test]
    fn nothing_to_summarise() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
        let s = Summary::of(&[f64::NAN, 2.0]).unwrap();
        assert_eq!((s.n, s.median), (1, 2.0));
    }

    #[test]
    fn ratios_of_medians() {
        let a = Summary::of(&[3.0, 30.0, 3.0]).unwrap();
        let b = Summary::of(&[2.0, 1.0, 200.0]).unwrap();
        assert_eq!(median_ratio(Some(&a), Some(&b)), Some(1.5));
        assert_eq!(median_ratio(Some(&a), None), None);
        let zero = Summary::of(&[0.0]).unwrap();
        assert_eq!(median_ratio(Some(&a), Some(&zero)), None);
    }
}

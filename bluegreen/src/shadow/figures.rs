//! Per-color figures of shadowed requests: status classes, failures, time
//! to first byte, total time and response size, for the live color (from
//! the kernel's reply records) and the shadow (the idle color's answers),
//! and how often the two disagree on the same request.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::http::{StatusClass, status_class};

/// Enough recent requests for a p99 that moves with the service, in 512 KiB
/// at most per store.
const DEFAULT_CAPACITY: usize = 65_536;

/// The most recent durations, in nanoseconds: old ones drop out, so the
/// quantiles describe the service as it is now and memory stays bounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Samples {
    capacity: usize,
    values: VecDeque<u64>,
}

impl Samples {
    /// A store keeping the last `capacity` durations (at least one).
    pub fn new(capacity: usize) -> Samples {
        let capacity = capacity.max(1);
        Samples {
            capacity,
            // Grown as needed: most services never fill it.
            values: VecDeque::new(),
        }
    }

    pub fn push(&mut self, value_ns: u64) {
        if self.values.len() == self.capacity {
            self.values.pop_front();
        }
        self.values.push_back(value_ns);
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The `q` quantile (0 to 1) of the durations held, by nearest rank: the
    /// smallest held value with at least `q` of all values at or below it
    /// (rank `ceil(q * n)`, at least 1). Always a measured value, never an
    /// interpolation. `None` when empty or `q` is outside 0 to 1.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.is_empty() || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let mut sorted: Vec<u64> = self.values.iter().copied().collect();
        sorted.sort_unstable();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        Some(sorted[rank - 1])
    }
}

impl Default for Samples {
    fn default() -> Samples {
        Samples::new(DEFAULT_CAPACITY)
    }
}

/// How one request went on one color.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The final status, if the answer began with a status line.
    pub status: Option<u16>,
    pub ttfb_ns: Option<u64>,
    pub total_ns: Option<u64>,
    pub bytes: u64,
    /// No answer, a connection error or a timeout.
    pub failed: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ColorFigures {
    pub requests: u64,
    /// Answers by status class, indexed by [`StatusClass`] (1xx first).
    pub status: [u64; 5],
    pub failed: u64,
    pub ttfb: Samples,
    pub total: Samples,
    pub response_bytes: u64,
}

impl ColorFigures {
    /// Counts a request. A failed one counts only as failed: its times and
    /// size measure the failure (a timeout, a reset), not the service, and
    /// a status it may have had would count it twice in the error ratio.
    pub fn record(&mut self, outcome: &Outcome) {
        self.requests += 1;
        if outcome.failed {
            self.failed += 1;
            return;
        }
        if let Some(status) = outcome.status {
            self.status[status_class(status) as usize] += 1;
        }
        if let Some(ttfb) = outcome.ttfb_ns {
            self.ttfb.push(ttfb);
        }
        if let Some(total) = outcome.total_ns {
            self.total.push(total);
        }
        self.response_bytes += outcome.bytes;
    }

    /// The share of requests that got a 5xx or no answer.
    pub fn error_ratio(&self) -> Option<f64> {
        let errors = self.status[StatusClass::ServerError as usize] + self.failed;
        (self.requests > 0).then(|| errors as f64 / self.requests as f64)
    }

    fn summary(&self) -> ColorSummary {
        let ms = |samples: &Samples, q| samples.quantile(q).map(|ns| ns as f64 / 1e6);
        ColorSummary {
            requests: self.requests,
            status_1xx: self.status[StatusClass::Informational as usize],
            status_2xx: self.status[StatusClass::Success as usize],
            status_3xx: self.status[StatusClass::Redirect as usize],
            status_4xx: self.status[StatusClass::ClientError as usize],
            status_5xx: self.status[StatusClass::ServerError as usize],
            failed: self.failed,
            error_ratio: self.error_ratio(),
            ttfb_p50_ms: ms(&self.ttfb, 0.50),
            ttfb_p95_ms: ms(&self.ttfb, 0.95),
            ttfb_p99_ms: ms(&self.ttfb, 0.99),
            total_p50_ms: ms(&self.total, 0.50),
            total_p95_ms: ms(&self.total, 0.95),
            total_p99_ms: ms(&self.total, 0.99),
            response_bytes: self.response_bytes,
        }
    }
}

/// The live color against the shadow, over the same requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    pub live: ColorFigures,
    pub shadow: ColorFigures,
    /// Requests with an outcome on both colors.
    pub paired: u64,
    /// Pairs whose status class differs, a failure counting as a class of
    /// its own. A pair where either side answered without a readable
    /// status is not compared: it says nothing either way.
    pub mismatched_status: u64,
}

impl Comparison {
    pub fn pair(&mut self, live: &Outcome, shadow: &Outcome) {
        self.live.record(live);
        self.shadow.record(shadow);
        self.paired += 1;
        if let (Some(live), Some(shadow)) = (verdict(live), verdict(shadow))
            && live != shadow
        {
            self.mismatched_status += 1;
        }
    }

    /// A live request with no replay to compare it with.
    pub fn record_live_only(&mut self, live: &Outcome) {
        self.live.record(live);
    }

    /// A replayed request whose live exchange was not seen.
    pub fn record_shadow_only(&mut self, shadow: &Outcome) {
        self.shadow.record(shadow);
    }

    pub fn summary(&self) -> Summary {
        Summary {
            live: self.live.summary(),
            shadow: self.shadow.summary(),
            paired: self.paired,
            mismatched_status: self.mismatched_status,
        }
    }
}

/// The status class of an outcome, `Some(None)` for a failure, `None` when
/// unknown.
fn verdict(outcome: &Outcome) -> Option<Option<StatusClass>> {
    if outcome.failed {
        Some(None)
    } else {
        outcome.status.map(|status| Some(status_class(status)))
    }
}

/// The comparison as `status --json` shows it and the state file keeps it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub live: ColorSummary,
    pub shadow: ColorSummary,
    pub paired: u64,
    pub mismatched_status: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ColorSummary {
    pub requests: u64,
    pub status_1xx: u64,
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub failed: u64,
    pub error_ratio: Option<f64>,
    pub ttfb_p50_ms: Option<f64>,
    pub ttfb_p95_ms: Option<f64>,
    pub ttfb_p99_ms: Option<f64>,
    pub total_p50_ms: Option<f64>,
    pub total_p95_ms: Option<f64>,
    pub total_p99_ms: Option<f64>,
    pub response_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16, ttfb_ns: u64, total_ns: u64, bytes: u64) -> Outcome {
        Outcome {
            status: Some(status),
            ttfb_ns: Some(ttfb_ns),
            total_ns: Some(total_ns),
            bytes,
            failed: false,
        }
    }

    const FAILED: Outcome = Outcome {
        status: None,
        ttfb_ns: None,
        total_ns: Some(30_000_000_000),
        bytes: 0,
        failed: true,
    };

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut samples = Samples::new(100);
        assert!(samples.is_empty());
        assert_eq!(samples.quantile(0.5), None, "empty");
        // Pushed out of order: 10, 20, ..., 100.
        for value in [70, 10, 100, 40, 20, 90, 30, 60, 50, 80] {
            samples.push(value);
        }
        assert_eq!(samples.len(), 10);
        for (q, expected) in [
            (0.0, 10),
            (0.1, 10),
            (0.11, 20),
            (0.5, 50),
            (0.51, 60),
            (0.95, 100),
            (0.99, 100),
            (1.0, 100),
        ] {
            assert_eq!(samples.quantile(q), Some(expected), "q = {q}");
        }
        for q in [-0.1, 1.1, f64::NAN] {
            assert_eq!(samples.quantile(q), None, "q = {q}");
        }
        let mut one = Samples::new(10);
        one.push(7);
        assert_eq!((one.quantile(0.0), one.quantile(0.99)), (Some(7), Some(7)));
    }

    #[test]
    fn samples_keep_the_most_recent() {
        let mut samples = Samples::new(3);
        for value in [1000, 1, 2, 3] {
            samples.push(value);
        }
        assert_eq!(samples.len(), 3);
        assert_eq!(samples.quantile(1.0), Some(3), "the oldest, 1000, is gone");
        assert_eq!(samples.quantile(0.0), Some(1));
        assert_eq!(Samples::default().capacity, 65_536);
        let mut at_least_one = Samples::new(0);
        at_least_one.push(5);
        at_least_one.push(6);
        assert_eq!(
            (at_least_one.len(), at_least_one.quantile(0.5)),
            (1, Some(6))
        );
    }

    #[test]
    fn figures_count_classes_failures_and_the_error_ratio() {
        let mut figures = ColorFigures::default();
        assert_eq!(figures.error_ratio(), None, "no requests");
        for outcome in [
            answered(200, 1, 2, 10),
            answered(201, 1, 2, 10),
            answered(404, 1, 2, 5),
            answered(503, 1, 2, 5),
            FAILED,
            Outcome {
                status: None,
                ttfb_ns: Some(1),
                total_ns: Some(2),
                bytes: 3,
                failed: false,
            },
        ] {
            figures.record(&outcome);
        }
        assert_eq!(figures.requests, 6);
        assert_eq!(figures.status, [0, 2, 0, 1, 1]);
        assert_eq!(figures.failed, 1);
        assert_eq!(figures.response_bytes, 33);
        assert_eq!(
            (figures.ttfb.len(), figures.total.len()),
            (5, 5),
            "a failure's times are not the service's"
        );
        assert_eq!(figures.error_ratio(), Some(2.0 / 6.0));
    }

    #[test]
    fn pairs_with_different_classes_are_mismatches() {
        let mut comparison = Comparison::default();
        let unknown = Outcome {
            status: None,
            ttfb_ns: Some(1),
            total_ns: Some(1),
            bytes: 1,
            failed: false,
        };
        for (live, shadow, mismatch) in [
            (answered(200, 1, 1, 1), answered(204, 1, 1, 1), false),
            (answered(200, 1, 1, 1), answered(500, 1, 1, 1), true),
            (answered(302, 1, 1, 1), answered(404, 1, 1, 1), true),
            (answered(200, 1, 1, 1), FAILED, true),
            (FAILED, FAILED, false),
            (unknown, answered(500, 1, 1, 1), false),
        ] {
            let before = comparison.mismatched_status;
            comparison.pair(&live, &shadow);
            assert_eq!(
                comparison.mismatched_status - before,
                u64::from(mismatch),
                "{live:?} against {shadow:?}"
            );
        }
        assert_eq!(comparison.paired, 6);
        assert_eq!(comparison.mismatched_status, 3);
        comparison.record_live_only(&answered(200, 1, 1, 1));
        comparison.record_shadow_only(&FAILED);
        comparison.record_shadow_only(&FAILED);
        assert_eq!(comparison.paired, 6, "unpaired outcomes are not pairs");
        assert_eq!(
            (comparison.live.requests, comparison.shadow.requests),
            (7, 8)
        );
    }

    #[test]
    fn the_summary_is_in_milliseconds_and_round_trips_through_json() {
        let mut comparison = Comparison::default();
        for ms in 1..=100 {
            comparison.pair(
                &answered(200, ms * 1_000_000, ms * 2_000_000, 100),
                &answered(
                    if ms % 10 == 0 { 503 } else { 200 },
                    ms * 500_000,
                    ms * 3_000_000,
                    90,
                ),
            );
        }
        let summary = comparison.summary();
        assert_eq!(summary.paired, 100);
        assert_eq!(summary.mismatched_status, 10);
        let live = &summary.live;
        assert_eq!(
            (live.requests, live.status_2xx, live.status_5xx),
            (100, 100, 0)
        );
        assert_eq!(live.error_ratio, Some(0.0));
        assert_eq!(
            (live.ttfb_p50_ms, live.ttfb_p95_ms, live.ttfb_p99_ms),
            (Some(50.0), Some(95.0), Some(99.0))
        );
        assert_eq!(
            (live.total_p50_ms, live.total_p95_ms, live.total_p99_ms),
            (Some(100.0), Some(190.0), Some(198.0))
        );
        assert_eq!(live.response_bytes, 10_000);
        let shadow = &summary.shadow;
        assert_eq!((shadow.status_2xx, shadow.status_5xx), (90, 10));
        assert_eq!(shadow.error_ratio, Some(0.1));
        assert_eq!(shadow.ttfb_p50_ms, Some(25.0));
        assert_eq!(shadow.total_p99_ms, Some(297.0));

        let json = serde_json::to_string(&summary).expect("serialize");
        assert!(json.contains("\"ttfb_p95_ms\":95.0"), "{json}");
        let back: Summary = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, summary);

        let empty = Comparison::default().summary();
        assert_eq!(
            (empty.live.error_ratio, empty.live.ttfb_p50_ms),
            (None, None)
        );
    }
}

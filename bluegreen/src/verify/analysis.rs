//! Metric analysis (`[[service.analysis]]`): a figure of a color's
//! backends, measured over a window and judged against a threshold range
//! or against the live color's same figure. Two sources: a Prometheus
//! server (an instant PromQL query whose window is in the query), or the
//! backends' own `/metrics`, read directly: then the figure comes from the
//! difference between two readings a window apart, as `increase()` would
//! give it, counter resets included.
//!
//! An [`Analyzer`] keeps the readings of one analysis; the gate, `shift`
//! and the daemon each measure through one and decide what a verdict
//! means for them (see [`NoData`]).

use std::{collections::VecDeque, fmt, net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use super::Target;
use crate::{
    backend_http::{each_backend, http_get},
    endpoint::Color,
    exposition,
    shadow::record::ShadowRecord,
};

mod prometheus;

/// `[[service.analysis]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub name: String,
    pub source: Source,
    pub threshold: Threshold,
    /// How far back the figure looks (the backends source; a Prometheus
    /// query holds its own range).
    pub window_secs: u64,
    /// How often `shift` and the daemon measure.
    pub interval_secs: u64,
    /// Failed measurements that fail the analysis in `shift` and the
    /// daemon's window (a gate measures once).
    pub failure_limit: u32,
    /// What a measurement without data counts as; `None`: fail for a
    /// switch, pass for the daemon's window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_data: Option<NoData>,
}

// The figures are checked finite at validation, so equality is total.
impl Eq for Analysis {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// An instant query against a Prometheus server's HTTP API; the query
    /// is a template (see [`Source::render`]).
    Prometheus { url: String, query: String },
    /// The backends' own metrics.
    Backends {
        figure: Figure,
        path: String,
        /// Read this port instead of the backend's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
    },
    /// The service's last shadowing run (`bluegreen shadow`): the idle
    /// color's answers to replayed requests, and the live color's to the
    /// same requests.
    Shadow { figure: ShadowFigure },
}

/// What the shadow source reads of a color in the last shadowing run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowFigure {
    TtfbP50,
    TtfbP95,
    TtfbP99,
    TotalP50,
    TotalP95,
    TotalP99,
    /// Answered 5xx or not at all, over requests.
    ErrorRatio,
    /// Requests whose two answers differ in status class, over the
    /// requests answered by both colors: the same for either color.
    MismatchRatio,
}

impl ShadowFigure {
    pub const NAMES: [&'static str; 8] = [
        "ttfb_p50",
        "ttfb_p95",
        "ttfb_p99",
        "total_p50",
        "total_p95",
        "total_p99",
        "error_ratio",
        "mismatch_ratio",
    ];

    pub fn parse(name: &str) -> Result<ShadowFigure, String> {
        Ok(match name {
            "ttfb_p50" => Self::TtfbP50,
            "ttfb_p95" => Self::TtfbP95,
            "ttfb_p99" => Self::TtfbP99,
            "total_p50" => Self::TotalP50,
            "total_p95" => Self::TotalP95,
            "total_p99" => Self::TotalP99,
            "error_ratio" => Self::ErrorRatio,
            "mismatch_ratio" => Self::MismatchRatio,
            other => {
                return Err(format!(
                    "figure {other:?} is not one of {}",
                    Self::NAMES.join(", ")
                ));
            }
        })
    }

    /// `color`'s figure in `record` (times in seconds, as histograms
    /// count them), if the run is recent enough to stand for `window_ms`
    /// before `now_ms`.
    fn of(
        self,
        record: Option<&ShadowRecord>,
        color: Color,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<f64, String> {
        let record = record.ok_or("the service has not been shadowed: `bluegreen shadow run`")?;
        if !record.is_running() && record.updated_unix_ms + window_ms < now_ms {
            return Err(format!(
                "its last shadowing run ended {} s ago, before this window",
                now_ms.saturating_sub(record.updated_unix_ms) / 1000
            ));
        }
        let summary = &record.report.comparison;
        let figures = if color == record.idle {
            &summary.shadow
        } else {
            &summary.live
        };
        if figures.requests == 0 {
            return Err(format!("no request of {color} in the shadowing run yet"));
        }
        let seconds = |ms: Option<f64>| {
            ms.map(|ms| ms / 1000.0)
                .ok_or_else(|| format!("no answer of {color} timed yet"))
        };
        match self {
            Self::TtfbP50 => seconds(figures.ttfb_p50_ms),
            Self::TtfbP95 => seconds(figures.ttfb_p95_ms),
            Self::TtfbP99 => seconds(figures.ttfb_p99_ms),
            Self::TotalP50 => seconds(figures.total_p50_ms),
            Self::TotalP95 => seconds(figures.total_p95_ms),
            Self::TotalP99 => seconds(figures.total_p99_ms),
            Self::ErrorRatio => figures
                .error_ratio
                .ok_or_else(|| format!("no request of {color} yet")),
            Self::MismatchRatio if summary.paired == 0 => {
                Err("no request answered by both colors yet".to_owned())
            }
            Self::MismatchRatio => Ok(summary.mismatched_status as f64 / summary.paired as f64),
        }
    }
}

/// What the backends source computes from `/metrics`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Figure {
    /// The `quantile` of a histogram's observations in the window, from
    /// its `_bucket` series (interpolated within a bucket, as
    /// `histogram_quantile` does).
    Quantile { histogram: String, quantile: f64 },
    /// The share of a counter's increase in the window whose `label`
    /// names a server error (a value starting with `5`: `5xx`, `503`).
    ErrorRatio { counter: String, label: String },
}

impl Eq for Figure {}

impl Figure {
    pub const DEFAULT_HISTOGRAM: &'static str = "vllm:time_to_first_token_seconds";
    pub const DEFAULT_COUNTER: &'static str = "http_requests_total";
    pub const DEFAULT_STATUS_LABEL: &'static str = "status";
    pub const DEFAULT_QUANTILE: f64 = 0.95;
}

/// The range a figure must stay in; every bound given must hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The target color's figure over the live one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ratio: Option<f64>,
}

impl Eq for Threshold {}

/// What a measurement that found no data counts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoData {
    Pass,
    Fail,
}

impl Analysis {
    pub const DEFAULT_WINDOW_SECS: u64 = 60;
    pub const DEFAULT_INTERVAL_SECS: u64 = 10;
    pub const DEFAULT_FAILURE_LIMIT: u32 = 2;
    pub const DEFAULT_PATH: &'static str = "/metrics";

    /// Checks the settings; the message names the offending one.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || self
                .name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "name {:?} must be non-empty, without spaces",
                self.name
            ));
        }
        let Threshold {
            min,
            max,
            max_ratio,
        } = self.threshold;
        if min.is_none() && max.is_none() && max_ratio.is_none() {
            return Err("give a threshold: min, max or max_ratio".to_owned());
        }
        for (name, bound) in [("min", min), ("max", max), ("max_ratio", max_ratio)] {
            if bound.is_some_and(|bound| !bound.is_finite()) {
                return Err(format!("{name} must be a finite number"));
            }
        }
        if let (Some(min), Some(max)) = (min, max)
            && min > max
        {
            return Err(format!("min {min} is above max {max}"));
        }
        if max_ratio.is_some_and(|ratio| ratio <= 0.0) {
            return Err("max_ratio must be above 0".to_owned());
        }
        if !(1..=86_400).contains(&self.window_secs) {
            return Err(format!(
                "window_secs {} is outside 1..=86400",
                self.window_secs
            ));
        }
        if !(1..=3_600).contains(&self.interval_secs) {
            return Err(format!(
                "interval_secs {} is outside 1..=3600",
                self.interval_secs
            ));
        }
        if !(1..=1_000).contains(&self.failure_limit) {
            return Err(format!(
                "failure_limit {} is outside 1..=1000",
                self.failure_limit
            ));
        }
        self.source.validate()
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs)
    }

    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }

    /// Whether a measurement must wait for a window of readings first (a
    /// Prometheus query already spans its window).
    pub fn needs_readings(&self) -> bool {
        matches!(self.source, Source::Backends { .. })
    }
}

impl Source {
    fn validate(&self) -> Result<(), String> {
        match self {
            Source::Prometheus { url, query } => {
                // Plain HTTP only: a Prometheus server the gates ask is on
                // the host or beside it, as the backends are.
                let rest = url.strip_prefix("http://").ok_or_else(|| {
                    format!("prometheus {url:?} must be an http:// URL, e.g. http://127.0.0.1:9090")
                })?;
                if rest.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(format!("prometheus {url:?} is not a URL"));
                }
                if query.trim().is_empty() {
                    return Err("a prometheus analysis needs a query".to_owned());
                }
                if let Some(unknown) = unknown_placeholder(query) {
                    return Err(format!(
                        "query has {{{{{unknown}}}}}; the placeholders are {}",
                        PLACEHOLDERS.join(", ")
                    ));
                }
                Ok(())
            }
            Source::Backends { figure, path, port } => {
                if !path.starts_with('/') || path.chars().any(|c| c.is_ascii_control()) {
                    return Err(format!(
                        "path {path:?} must start with '/' and hold no control character"
                    ));
                }
                if *port == Some(0) {
                    return Err("port 0 cannot be read: name the metrics port, or leave port out to read the backend's own".to_owned());
                }
                figure.validate()
            }
            Source::Shadow { .. } => Ok(()),
        }
    }

    /// `query` with the placeholders of [`PLACEHOLDERS`] filled in for
    /// `color`'s `backends`: `{{backends_regex}}` matches exactly their
    /// `address:port`, escaped for a PromQL string.
    pub fn render(
        query: &str,
        service: &str,
        vip: SocketAddr,
        color: Color,
        backends: &[SocketAddr],
    ) -> String {
        let regex = backends
            .iter()
            .map(|backend| {
                backend
                    .to_string()
                    .chars()
                    .flat_map(|c| match c {
                        // A regex metacharacter, escaped once for the regex
                        // and once more for the PromQL string holding it.
                        '.' | '[' | ']' => vec!['\\', '\\', c],
                        c => vec![c],
                    })
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("|");
        let list = backends
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(",");
        query
            .replace("{{color}}", &color.to_string())
            .replace("{{service}}", service)
            .replace("{{vip}}", &vip.to_string())
            .replace("{{backends_regex}}", &regex)
            .replace("{{backends}}", &list)
    }
}

/// The placeholders a Prometheus query may hold.
pub const PLACEHOLDERS: [&str; 5] = [
    "{{color}}",
    "{{service}}",
    "{{vip}}",
    "{{backends}}",
    "{{backends_regex}}",
];

/// The first `{{name}}` in `query` that is not a placeholder.
fn unknown_placeholder(query: &str) -> Option<&str> {
    let mut rest = query;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after.find("}}")?;
        let name = &after[..end];
        if !PLACEHOLDERS.contains(&format!("{{{{{name}}}}}").as_str()) {
            return Some(name);
        }
        rest = &after[end + 2..];
    }
    None
}

impl Figure {
    fn validate(&self) -> Result<(), String> {
        let metric_name = |name: &str| {
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        };
        match self {
            Figure::Quantile {
                histogram,
                quantile,
            } => {
                if !metric_name(histogram) {
                    return Err(format!("histogram {histogram:?} is not a metric name"));
                }
                if !(*quantile > 0.0 && *quantile < 1.0) {
                    return Err(format!("quantile {quantile} is outside (0, 1), e.g. 0.95"));
                }
            }
            Figure::ErrorRatio { counter, label } => {
                if !metric_name(counter) {
                    return Err(format!("counter {counter:?} is not a metric name"));
                }
                if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    return Err(format!("status_label {label:?} is not a label name"));
                }
            }
        }
        Ok(())
    }

    /// The series of one backend's `/metrics` this figure reads, summed
    /// over their other labels: each bucket's cumulative count (by upper
    /// bound), or the counter's total and its errors.
    fn read(&self, text: &str) -> Result<Counts, String> {
        let samples = exposition::samples(text)?;
        let mut counts = Counts::default();
        match self {
            Figure::Quantile { histogram, .. } => {
                let bucket = format!("{histogram}_bucket");
                for sample in samples.iter().filter(|sample| sample.name == bucket) {
                    let bound = sample
                        .label("le")
                        .and_then(|le| {
                            if le == "+Inf" {
                                Some(f64::INFINITY)
                            } else {
                                le.parse().ok()
                            }
                        })
                        .ok_or_else(|| format!("{bucket} has a series without a valid le label"))?;
                    counts.add(bound, sample.value);
                }
                if counts.0.is_empty() {
                    return Err(format!("no {bucket} series in the metrics"));
                }
                if counts
                    .0
                    .last()
                    .is_none_or(|(bound, _)| *bound != f64::INFINITY)
                {
                    return Err(format!("{bucket} has no le=\"+Inf\" bucket"));
                }
            }
            Figure::ErrorRatio { counter, label } => {
                let mut found = false;
                for sample in samples.iter().filter(|sample| sample.name == counter) {
                    found = true;
                    counts.add(TOTAL, sample.value);
                    if sample
                        .label(label)
                        .is_some_and(|status| status.starts_with('5'))
                    {
                        counts.add(ERRORS, sample.value);
                    } else {
                        counts.add(ERRORS, 0.0);
                    }
                }
                if !found {
                    return Err(format!("no {counter} series in the metrics"));
                }
            }
        }
        if counts
            .0
            .iter()
            .any(|(_, value)| !value.is_finite() || *value < 0.0)
        {
            return Err("a counter is negative or not a number".to_owned());
        }
        Ok(counts)
    }

    /// The figure of counts increased over a window; `None` when nothing
    /// was observed in it.
    fn compute(&self, increase: &Counts) -> Option<f64> {
        match self {
            Figure::Quantile { quantile, .. } => histogram_quantile(*quantile, &increase.0),
            Figure::ErrorRatio { .. } => {
                let total = increase.get(TOTAL)?;
                (total > 0.0).then(|| increase.get(ERRORS).unwrap_or(0.0) / total)
            }
        }
    }
}

const TOTAL: f64 = 0.0;
const ERRORS: f64 = 1.0;

/// Counts keyed by a number (a bucket's upper bound, or [`TOTAL`] and
/// [`ERRORS`]), in increasing key order.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Counts(pub Vec<(f64, f64)>);

impl Counts {
    fn add(&mut self, key: f64, value: f64) {
        match self.0.binary_search_by(|(at, _)| at.total_cmp(&key)) {
            Ok(found) => self.0[found].1 += value,
            Err(slot) => self.0.insert(slot, (key, value)),
        }
    }

    fn get(&self, key: f64) -> Option<f64> {
        self.0
            .iter()
            .find(|(at, _)| *at == key)
            .map(|(_, value)| *value)
    }

    /// What each count grew by since `earlier`. A count that went down
    /// means the backend restarted and its counters began again from 0:
    /// then all of today's counts are the increase, as Prometheus's
    /// `increase()` takes them.
    pub(crate) fn increase_since(&self, earlier: &Counts) -> Counts {
        let restarted = self.0.len() != earlier.0.len()
            || self
                .0
                .iter()
                .zip(&earlier.0)
                .any(|((key, now), (before_key, before))| key != before_key || now < before);
        if restarted {
            return self.clone();
        }
        Counts(
            self.0
                .iter()
                .zip(&earlier.0)
                .map(|((key, now), (_, before))| (*key, now - before))
                .collect(),
        )
    }
}

/// The `quantile` of the observations counted in cumulative `buckets`
/// (upper bound, count at or below it; the last bound +Inf), interpolated
/// linearly within the bucket it falls in, as Prometheus's
/// `histogram_quantile` does: the lowest bucket starts at 0, and a
/// quantile in the +Inf bucket is the highest finite bound. `None` when
/// the buckets counted nothing.
pub(crate) fn histogram_quantile(quantile: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    // Counts that went down between buckets (a scrape racing an update)
    // are taken as the highest below them, as Prometheus does.
    let mut cumulative = Vec::with_capacity(buckets.len());
    let mut highest: f64 = 0.0;
    for &(bound, count) in buckets {
        highest = highest.max(count);
        cumulative.push((bound, highest));
    }
    let &(last_bound, total) = cumulative.last()?;
    // A +Inf bucket alone bounds nothing (Prometheus says NaN).
    if total <= 0.0 || last_bound != f64::INFINITY || cumulative.len() < 2 {
        return None;
    }
    let rank = quantile * total;
    let at = cumulative.iter().position(|(_, count)| *count >= rank)?;
    let (upper, count) = cumulative[at];
    if upper == f64::INFINITY {
        return Some(cumulative[at - 1].0);
    }
    let (lower, below) = if at == 0 {
        (0.0_f64.min(upper), 0.0)
    } else {
        cumulative[at - 1]
    };
    if count == below {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below) / (count - below))
}

/// What one measurement found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// Nothing to judge: no observation in the window, a metric that does
    /// not exist, or a source that could not be read. Not a pass: what it
    /// counts as is the analysis's `no_data`.
    NoData,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::NoData => "no data",
        })
    }
}

/// One measurement of an analysis against a color.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub analysis: String,
    pub color: Color,
    pub verdict: Verdict,
    /// The target color's figure.
    pub value: Option<f64>,
    /// The color it is compared with, and its figure when the threshold
    /// has a ratio.
    pub baseline: Color,
    pub baseline_value: Option<f64>,
    pub threshold: Threshold,
    /// One line: the figures against the threshold, or why there are none.
    pub detail: String,
    pub at_unix_ms: u64,
}

impl Measurement {
    /// Whether it counts as a failure when no data counts as `no_data`
    /// (the analysis's own setting wins).
    pub fn failed(&self, no_data: NoData) -> bool {
        match self.verdict {
            Verdict::Pass => false,
            Verdict::Fail => true,
            Verdict::NoData => no_data == NoData::Fail,
        }
    }
}

/// Judges `value` of the target (and `baseline` of the color it is
/// compared with, when the threshold has a ratio) against `threshold`;
/// the detail names the figures and the bound that failed.
pub(crate) fn judge(
    threshold: &Threshold,
    value: f64,
    baseline: Option<f64>,
    baseline_color: Color,
) -> (Verdict, String) {
    let mut failed = Vec::new();
    if let Some(min) = threshold.min
        && value < min
    {
        failed.push(format!("below min {min}"));
    }
    if let Some(max) = threshold.max
        && value > max
    {
        failed.push(format!("above max {max}"));
    }
    let mut shown = format!("{value:.4}");
    if let (Some(max_ratio), Some(baseline)) = (threshold.max_ratio, baseline) {
        // Both at 0 is no worse; any figure over a baseline of 0 is
        // infinitely so.
        let ratio = if value == 0.0 {
            0.0
        } else if baseline == 0.0 {
            f64::INFINITY
        } else {
            value / baseline
        };
        shown = format!("{shown}, {ratio:.2}x {baseline_color}'s {baseline:.4}");
        // Both infinite (from a query) makes no ratio: not a pass.
        if ratio.is_nan() || ratio > max_ratio {
            failed.push(format!("above max_ratio {max_ratio}"));
        }
    } else if threshold.max_ratio.is_some() {
        // The target is the live color itself (`verify` of the active one).
        shown = format!("{shown} (max_ratio not judged: no other color to compare with)");
    }
    if failed.is_empty() {
        (Verdict::Pass, shown)
    } else {
        (Verdict::Fail, format!("{shown}: {}", failed.join(", ")))
    }
}

/// One reading of every backend of a color: its counts, or why there are
/// none.
#[derive(Clone, Debug)]
struct Reading {
    at_ms: u64,
    backends: Vec<(SocketAddr, Result<Counts, String>)>,
}

/// Measures one analysis, keeping the backends' readings of each color
/// for as long as its window needs them, and each color's last figure.
#[derive(Clone, Debug)]
pub struct Analyzer {
    analysis: Analysis,
    readings: [VecDeque<Reading>; 2],
    /// Each color's last figure and when it was measured: after a switch
    /// the previous color takes no new requests, so a ratio compares with
    /// what it showed while it served them.
    last_figures: [Option<(f64, u64)>; 2],
}

impl Analyzer {
    pub fn new(analysis: Analysis) -> Analyzer {
        Analyzer {
            analysis,
            readings: Default::default(),
            last_figures: [None; 2],
        }
    }

    pub fn analysis(&self) -> &Analysis {
        &self.analysis
    }

    /// Takes a first reading of the colors `target` names, so that a
    /// measurement a window later has something to compare with (only the
    /// backends source reads anything). Their earlier readings are
    /// dropped: a window starts here, not when the color was last measured
    /// (maybe a day ago, with other backends).
    pub fn prime(&mut self, target: &Target, now_ms: u64) {
        if let Source::Backends { figure, path, port } = &self.analysis.source {
            for (color, backends) in self.colors(target) {
                let reading =
                    read_backends(figure, path, *port, backends, self.analysis.interval());
                let readings = &mut self.readings[usize::from(color.wire())];
                readings.clear();
                readings.push_back(Reading {
                    at_ms: now_ms,
                    backends: reading,
                });
            }
        }
    }

    /// Measures the analysis now (`now_ms`, Unix milliseconds).
    pub fn measure(&mut self, target: &Target, now_ms: u64) -> Measurement {
        let mut figures = self
            .colors(target)
            .into_iter()
            .map(|(color, backends)| (color, self.figure_of(target, color, backends, now_ms)))
            .collect::<Vec<_>>()
            .into_iter();
        let (color, measured) = figures.next().expect("the target is always measured");
        let compared = figures.next().map(|(baseline, figure)| {
            figure.or_else(|reason| match self.last_figures[usize::from(baseline.wire())] {
                Some((value, at_ms)) => {
                    log::debug!(
                        "{}: {baseline} gives no figure now ({reason}); comparing with its last, from {} s ago",
                        self.analysis.name,
                        now_ms.saturating_sub(at_ms) / 1000
                    );
                    Ok(value)
                }
                None => Err(reason),
            })
        });
        let (verdict, value, baseline_value, detail) = match (measured, compared) {
            (Err(reason), _) => (Verdict::NoData, None, None, format!("{color}: {reason}")),
            (Ok(value), Some(Err(reason))) => (
                Verdict::NoData,
                Some(value),
                None,
                format!("{value:.4}, but {}: {reason}", target.baseline),
            ),
            (Ok(value), compared) => {
                let baseline = compared.and_then(Result::ok);
                let (verdict, shown) =
                    judge(&self.analysis.threshold, value, baseline, target.baseline);
                (verdict, Some(value), baseline, shown)
            }
        };
        Measurement {
            analysis: self.analysis.name.clone(),
            color: target.color,
            verdict,
            value,
            baseline: target.baseline,
            baseline_value,
            threshold: self.analysis.threshold,
            detail,
            at_unix_ms: now_ms,
        }
    }

    /// The colors measured: the target, and the baseline when the
    /// threshold compares with it (and it is another color).
    fn colors<'a>(&self, target: &'a Target) -> Vec<(Color, &'a [SocketAddr])> {
        let mut colors = vec![(target.color, target.backends.as_slice())];
        if self.analysis.threshold.max_ratio.is_some() && target.baseline != target.color {
            colors.push((target.baseline, target.baseline_backends.as_slice()));
        }
        colors
    }

    /// `color`'s figure now, remembered when there is one.
    fn figure_of(
        &mut self,
        target: &Target,
        color: Color,
        backends: &[SocketAddr],
        now_ms: u64,
    ) -> Result<f64, String> {
        let figure = match &self.analysis.source {
            Source::Prometheus { url, query } => {
                let rendered = Source::render(query, &target.service, target.vip, color, backends);
                let timeout = self.analysis.interval().min(Duration::from_secs(10));
                prometheus::instant_value(url, &rendered, timeout)
            }
            Source::Shadow { figure } => figure.of(
                target.shadow.as_ref(),
                color,
                now_ms,
                self.analysis.window_secs * 1000,
            ),
            Source::Backends { figure, path, port } => {
                let window_ms = self.analysis.window_secs * 1000;
                let readings = &mut self.readings[usize::from(color.wire())];
                readings.push_back(Reading {
                    at_ms: now_ms,
                    backends: read_backends(
                        figure,
                        path,
                        *port,
                        backends,
                        self.analysis.interval(),
                    ),
                });
                // The newest reading at least a window old, and those after it.
                while readings.len() > 2 && readings[1].at_ms + window_ms <= now_ms {
                    readings.pop_front();
                }
                figure_over(figure, readings)
            }
        };
        if let Ok(value) = figure {
            self.last_figures[usize::from(color.wire())] = Some((value, now_ms));
        }
        figure
    }
}

/// A service's analyses measured round after round (during `shift`'s
/// steps, and by the daemon), each counting its failed measurements.
#[derive(Clone, Debug)]
pub struct Watched {
    entries: Vec<Entry>,
    /// What no data counts as for analyses that do not say.
    no_data: NoData,
}

#[derive(Clone, Debug)]
struct Entry {
    analyzer: Analyzer,
    failures: u32,
    due_ms: u64,
    last: Option<Measurement>,
}

/// An analysis that has failed as often as its limit allows.
#[derive(Clone, Debug, PartialEq)]
pub struct Failed {
    pub measurement: Measurement,
    pub failures: u32,
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Measurement {
            analysis,
            color,
            verdict,
            detail,
            ..
        } = &self.measurement;
        write!(
            f,
            "analysis {analysis} failed {} times, its failure_limit; last: {color} {detail} ({verdict})",
            self.failures
        )
    }
}

impl Watched {
    pub fn new(analyses: &[Analysis], no_data: NoData) -> Watched {
        Watched {
            entries: analyses
                .iter()
                .map(|analysis| Entry {
                    analyzer: Analyzer::new(analysis.clone()),
                    failures: 0,
                    due_ms: 0,
                    last: None,
                })
                .collect(),
            no_data,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Starts counting afresh at `now_ms`: every failure forgotten, a
    /// first reading taken, each analysis next due an interval later.
    pub fn restart(&mut self, target: &Target, now_ms: u64) {
        for entry in &mut self.entries {
            entry.failures = 0;
            entry.analyzer.prime(target, now_ms);
            entry.due_ms = now_ms + entry.analyzer.analysis().interval_secs * 1000;
        }
    }

    /// Measures every analysis whose interval has come; the first that
    /// has now failed its `failure_limit` times, if any.
    pub fn measure_due(&mut self, target: &Target, now_ms: u64) -> Option<Failed> {
        let mut failed = None;
        for entry in &mut self.entries {
            if entry.due_ms > now_ms {
                continue;
            }
            let analysis = entry.analyzer.analysis();
            entry.due_ms = now_ms + analysis.interval_secs * 1000;
            let no_data = analysis.no_data.unwrap_or(self.no_data);
            let limit = analysis.failure_limit;
            let measurement = entry.analyzer.measure(target, now_ms);
            if measurement.failed(no_data) {
                entry.failures += 1;
                if entry.failures >= limit && failed.is_none() {
                    failed = Some(Failed {
                        measurement: measurement.clone(),
                        failures: entry.failures,
                    });
                }
            }
            entry.last = Some(measurement);
        }
        failed
    }

    /// Each measured analysis: its last measurement and its failures so
    /// far.
    pub fn statuses(&self) -> Vec<AnalysisStatus> {
        self.entries
            .iter()
            .filter_map(|entry| {
                entry.last.clone().map(|last| AnalysisStatus {
                    failures: entry.failures,
                    failure_limit: entry.analyzer.analysis().failure_limit,
                    last,
                })
            })
            .collect()
    }
}

/// One analysis as the daemon last measured it, for `status` and the
/// metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnalysisStatus {
    pub last: Measurement,
    /// Failed measurements since the last switch (or the daemon's start).
    pub failures: u32,
    pub failure_limit: u32,
}

/// What the daemon keeps of a service's analyses between its rounds, in
/// the state directory, for `status` (a separate process) to show.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnalysesRecord {
    pub schema_version: u32,
    pub analyses: Vec<AnalysisStatus>,
}

impl AnalysesRecord {
    /// Bumped on any incompatible change: `status` ignores a record of
    /// another version rather than misread it.
    pub const SCHEMA_VERSION: u32 = 1;
}

fn read_backends(
    figure: &Figure,
    path: &str,
    port: Option<u16>,
    backends: &[SocketAddr],
    timeout: Duration,
) -> Vec<(SocketAddr, Result<Counts, String>)> {
    let read = each_backend(backends, |backend| {
        let at = SocketAddr::new(backend.ip(), port.unwrap_or(backend.port()));
        figure.read(&http_get(at, path, timeout)?)
    });
    backends.iter().copied().zip(read).collect()
}

/// The figure of a color from its oldest and newest readings: each
/// backend read both times adds its increase.
fn figure_over(figure: &Figure, readings: &VecDeque<Reading>) -> Result<f64, String> {
    let (Some(first), Some(last)) = (readings.front(), readings.back()) else {
        return Err("not read yet".to_owned());
    };
    if readings.len() < 2 {
        return Err("one reading so far; a figure needs two, a window apart".to_owned());
    }
    let mut increase = Counts::default();
    let mut compared = 0;
    let mut errors = Vec::new();
    for (backend, now) in &last.backends {
        let before = first
            .backends
            .iter()
            .find(|(earlier, _)| earlier == backend)
            .map(|(_, counts)| counts);
        match (before, now) {
            (Some(Ok(before)), Ok(now)) => {
                for (key, grew) in now.increase_since(before).0 {
                    increase.add(key, grew);
                }
                compared += 1;
            }
            // A backend read once is new to the pool: it counts from
            // the next reading.
            (None, Ok(_)) => {}
            (_, Err(error)) | (Some(Err(error)), _) => errors.push(format!("{backend}: {error}")),
        }
    }
    // Every backend, or no figure: the one left out may be the failing one.
    if let Some(error) = errors.first() {
        return Err(format!(
            "{} of {} backends could not be read ({error})",
            errors.len(),
            last.backends.len()
        ));
    }
    if compared == 0 {
        return Err("no backend was read twice".to_owned());
    }
    // Wall-clock times: a clock stepped back must not underflow.
    let seconds = last.at_ms.saturating_sub(first.at_ms) as f64 / 1000.0;
    figure
        .compute(&increase)
        .ok_or_else(|| format!("nothing observed in the last {seconds:.0} s"))
}

#[cfg(test)]
mod tests;

//! Model servers' metrics whose values a test controls: each backend
//! serves a steady stream of synthetic requests (20 every 50 ms) at a
//! latency and an error share the test sets, and exports what vLLM would:
//! a time-to-first-token histogram, request counters by status class, and
//! its queue (always empty: every request is served within its tick). The
//! figures grow as a real server's do, so a window's difference is what
//! was served in it.

use std::{
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::http::MetricsWriter;

/// The histogram's upper bounds, as vLLM's are (a subset).
const BOUNDS: [f64; 7] = [0.05, 0.1, 0.2, 0.3, 0.6, 1.0, 2.5];
const TICK: Duration = Duration::from_millis(50);
const REQUESTS_PER_TICK: u64 = 20;
/// No test runs longer: the stream stops by itself after this.
const LIFETIME: Duration = Duration::from_secs(180);

/// How one backend serves from now on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Profile {
    pub ttft_secs: f64,
    pub error_percent: u64,
}

impl Profile {
    pub const fn new(ttft_secs: f64, error_percent: u64) -> Profile {
        Profile {
            ttft_secs,
            error_percent,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Served {
    /// Cumulative count per bound of [`BOUNDS`], then +Inf.
    buckets: [u64; BOUNDS.len() + 1],
    sum: f64,
    ok: u64,
    errors: u64,
}

impl Served {
    fn serve(&mut self, profile: Profile) {
        let errors = REQUESTS_PER_TICK * profile.error_percent / 100;
        self.errors += errors;
        self.ok += REQUESTS_PER_TICK - errors;
        for (bucket, bound) in self.buckets.iter_mut().zip(BOUNDS) {
            if profile.ttft_secs <= bound {
                *bucket += REQUESTS_PER_TICK;
            }
        }
        self.buckets[BOUNDS.len()] += REQUESTS_PER_TICK;
        self.sum += profile.ttft_secs * REQUESTS_PER_TICK as f64;
    }

    fn exposition(&self) -> String {
        let mut text = String::from(
            "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.\n\
             # TYPE vllm:time_to_first_token_seconds histogram\n",
        );
        let labels = "model_name=\"m\"";
        for (bound, count) in BOUNDS.iter().zip(self.buckets) {
            let _ = writeln!(
                text,
                "vllm:time_to_first_token_seconds_bucket{{le=\"{bound}\",{labels}}} {count}"
            );
        }
        let total = self.buckets[BOUNDS.len()];
        let _ = writeln!(
            text,
            "vllm:time_to_first_token_seconds_bucket{{le=\"+Inf\",{labels}}} {total}\n\
             vllm:time_to_first_token_seconds_sum{{{labels}}} {}\n\
             vllm:time_to_first_token_seconds_count{{{labels}}} {total}\n\
             # TYPE http_requests_total counter\n\
             http_requests_total{{handler=\"/v1/completions\",method=\"POST\",status=\"2xx\"}} {}\n\
             http_requests_total{{handler=\"/v1/completions\",method=\"POST\",status=\"5xx\"}} {}\n\
             # TYPE vllm:num_requests_waiting gauge\n\
             vllm:num_requests_waiting{{{labels}}} 0",
            self.sum, self.ok, self.errors
        );
        text
    }
}

/// Backends serving synthetic requests until dropped (or [`LIFETIME`]).
pub struct ModelMetrics {
    profiles: Arc<Mutex<Vec<Profile>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ModelMetrics {
    /// Each of `writers`' backends serving with `profile`.
    pub fn start(writers: Vec<MetricsWriter>, profile: Profile) -> ModelMetrics {
        let profiles = Arc::new(Mutex::new(vec![profile; writers.len()]));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (profiles, stop) = (profiles.clone(), stop.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut served = vec![Served::default(); writers.len()];
                while !stop.load(Ordering::Relaxed) && started.elapsed() < LIFETIME {
                    let now = profiles.lock().expect("profiles lock").clone();
                    for ((served, writer), profile) in served.iter_mut().zip(&writers).zip(now) {
                        served.serve(profile);
                        writer.set(&served.exposition());
                    }
                    std::thread::sleep(TICK);
                }
            })
        };
        ModelMetrics {
            profiles,
            stop,
            thread: Some(thread),
        }
    }

    /// How the `index`th backend serves from now on.
    pub fn set(&self, index: usize, profile: Profile) {
        self.profiles.lock().expect("profiles lock")[index] = profile;
    }
}

impl Drop for ModelMetrics {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

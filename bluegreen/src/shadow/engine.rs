//! The shadowing run itself: records from the ring are put back into each
//! sampled flow's byte stream, cut into requests, replayed to the idle
//! color by one task per flow, and each request's two answers (the live
//! color's, from its reply records, and the idle color's, from the replay)
//! are compared. Everything it holds is bounded: flows, bytes waiting, and
//! answers waiting for their pair.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bluegreen_common::{FlowKey, IPPROTO_UDP, flow_hash};
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};

use super::{
    capture::{self, Origin, Record, RingReader},
    figures::{Comparison, Outcome, Summary},
    http::{HttpError, Request, RequestParser},
    live::LiveExchanges,
    options::ShadowOptions,
    reassembly::{self, FlowEvent, Limits, Reassembler},
    replay::{Job, Replay, ReplayCounters, ReplayCounts, Report},
};
use crate::clock::monotonic_ns;

/// Jobs queued for one flow's replay before the flow counts as one the idle
/// color cannot keep up with.
const QUEUED_JOBS: usize = 256;
/// Answers held while waiting for their other half; beyond it the oldest
/// flow's are recorded unpaired.
const MAX_PENDING_FLOWS: usize = 65_536;
/// How much longer than a response timeout a stopping run waits for the
/// answers of the requests in replay.
const FINISH_MARGIN: Duration = Duration::from_secs(2);
/// UDP flows remembered as refused; beyond, they are forgotten all at once.
const MAX_REFUSED: usize = 65_536;
/// Records read before other work (timers, replay reports) gets a turn.
const READ_BATCH: usize = 4096;

/// Why a run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "detail")]
pub enum StopReason {
    /// `bluegreen shadow stop`, a signal, or the daemon stopping.
    Requested,
    /// The run's duration ended.
    DurationEnded,
    /// The idle color became live.
    Switched,
    /// The idle color failed its health check.
    IdleUnhealthy(String),
    /// The service is gone, or no longer reachable.
    ServiceGone(String),
    /// Reading the capture failed.
    Failed(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Requested => f.write_str("stopped on request"),
            Self::DurationEnded => f.write_str("its duration ended"),
            Self::Switched => f.write_str("the idle color became live"),
            Self::IdleUnhealthy(detail) => write!(f, "the idle color is unhealthy: {detail}"),
            Self::ServiceGone(detail) => write!(f, "the service is gone: {detail}"),
            Self::Failed(detail) => write!(f, "capture failed: {detail}"),
        }
    }
}

/// What the engine asks of the host it runs on.
pub trait Control {
    /// The idle color's backend for a new flow with this hash, as the
    /// dataplane would pick it (pool, weights, drains); `None` when the
    /// idle color has none taking new flows.
    fn backend(&mut self, hash: u32) -> Option<SocketAddr>;
    /// Called about once a second: a reason to stop, if there is one.
    fn check(&mut self) -> Option<StopReason>;
    /// Turns the dataplane's capture off: the run is stopping.
    fn stop_capture(&mut self);
    /// The dataplane's capture counters since the run began, by name.
    fn capture_counts(&mut self) -> BTreeMap<String, u64>;
    /// Called about once a second and at the end, with the run's figures.
    fn publish(&mut self, report: &ShadowReport);
}

/// What the engine itself counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineCounts {
    /// Flows handed to a replay task.
    pub flows_replayed: u64,
    /// Sampled flows not replayed: `max_inflight` flows were already.
    pub flows_over_inflight: u64,
    /// Sampled flows not replayed: the idle color had no backend.
    pub flows_without_backend: u64,
    /// Flows given up because the idle color fell behind their client.
    pub flows_backlogged: u64,
    /// Flows given up to stay within the byte bound.
    pub flows_over_memory: u64,
    /// Flows whose client stream stopped parsing as HTTP (replayed no
    /// further).
    pub flows_not_http: u64,
    /// Flows closed after `idle_timeout` without a byte.
    pub flows_idle: u64,
    /// Requests the allow-list kept from replay.
    pub requests_not_allowed: u64,
    /// Ring records that could not be used.
    pub bad_records: u64,
    /// Live-reply records of flows the run does not follow.
    pub unmatched_replies: u64,
    /// Flows whose answers were recorded unpaired to bound memory.
    pub pairs_dropped: u64,
}

/// A run's figures: the dataplane's capture (since the run began), the
/// rebuilding of streams, the replay, and the two colors side by side.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowReport {
    pub capture: BTreeMap<String, u64>,
    pub reassembly: reassembly::Counters,
    pub engine: EngineCounts,
    pub replay: ReplayCounts,
    /// Flows being replayed now.
    pub inflight: usize,
    /// Client bytes held now (out of order, waiting for a request's end,
    /// or queued for replay).
    pub buffered_bytes: usize,
    /// Flows being put back in order now.
    pub reassembling: usize,
    pub comparison: Summary,
}

/// How a flow's client stream is read.
enum Stream {
    Http(RequestParser),
    /// Not HTTP (or no longer): bytes as they come.
    Opaque,
    Udp,
}

struct Flow {
    id: u64,
    stream: Stream,
    jobs: mpsc::Sender<Job>,
    live: LiveExchanges,
    /// Requests cut from the stream so far (a stream that is not HTTP
    /// counts as one from its first byte).
    requests: u64,
    last_activity_ns: u64,
}

/// One flow's answers waiting for their other half, by request index.
#[derive(Default)]
struct Pairs {
    live: BTreeMap<u64, Outcome>,
    shadow: BTreeMap<u64, Outcome>,
    /// Requests not replayed: their live answers are not compared.
    skipped: BTreeSet<u64>,
    client_done: bool,
    replay_done: bool,
}

pub struct Engine<C> {
    control: C,
    options: ShadowOptions,
    reassembler: Reassembler,
    flows: HashMap<FlowKey, Flow>,
    pairs: BTreeMap<u64, Pairs>,
    next_flow: u64,
    comparison: Comparison,
    counts: EngineCounts,
    replay_counters: Arc<ReplayCounters>,
    reports_sender: mpsc::UnboundedSender<Report>,
    /// Taken by `run`, which waits on it beside the ring.
    reports: Option<mpsc::UnboundedReceiver<Report>>,
    /// The capture's counters since the run began.
    capture: BTreeMap<String, u64>,
    events: Vec<FlowEvent>,
    /// Bytes the flows' request parsers hold, over all flows.
    parser_bytes: usize,
    /// The flows' replay tasks, aborted when the run ends: nothing is
    /// replayed once it has stopped (after a switch, the idle color is
    /// live).
    replays: JoinSet<()>,
    /// Replay tasks that have not reported their end.
    inflight: usize,
    /// UDP flows refused a replay (over `max_inflight`, or no backend),
    /// with when: not retried at each datagram, until idle.
    refused: HashMap<FlowKey, u64>,
}

impl<C: Control> Engine<C> {
    pub fn new(control: C, options: ShadowOptions) -> Self {
        let (reports_sender, reports) = mpsc::unbounded_channel();
        let limits = Limits {
            max_flows: options.max_inflight.max(1) * 4,
            max_buffered_bytes: options.max_buffered_bytes / 2,
            ..Limits::default()
        };
        Self {
            control,
            reassembler: Reassembler::new(limits),
            options,
            flows: HashMap::new(),
            pairs: BTreeMap::new(),
            next_flow: 0,
            comparison: Comparison::default(),
            counts: EngineCounts::default(),
            replay_counters: Arc::new(ReplayCounters::default()),
            reports_sender,
            reports: Some(reports),
            capture: BTreeMap::new(),
            events: Vec::new(),
            parser_bytes: 0,
            replays: JoinSet::new(),
            inflight: 0,
            refused: HashMap::new(),
        }
    }

    fn read_capture_counts(&mut self) {
        self.capture = self.control.capture_counts();
    }

    /// Runs until `stop` says so or [`Control::check`] finds a reason;
    /// returns the reason, after publishing the last report.
    pub async fn run(
        mut self,
        mut ring: RingReader,
        mut stop: watch::Receiver<Option<StopReason>>,
    ) -> (StopReason, ShadowReport) {
        let mut reports = self.reports.take().expect("a run runs once");
        self.read_capture_counts();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reason = loop {
            tokio::select! {
                read = ring.read(READ_BATCH, |bytes| self.record(bytes)) => {
                    if let Err(error) = read {
                        break StopReason::Failed(error.to_string());
                    }
                    // Every report waiting, between batches: a replay
                    // that finished frees its slot for the next flow.
                    while let Ok(report) = reports.try_recv() {
                        self.report(report);
                    }
                }
                Some(report) = reports.recv() => {
                    self.report(report);
                    while let Ok(report) = reports.try_recv() {
                        self.report(report);
                    }
                }
                _ = tick.tick() => {
                    self.expire();
                    if let Some(reason) = self.control.check() {
                        break reason;
                    }
                    self.read_capture_counts();
                    let report = self.report_now();
                    self.control.publish(&report);
                }
                changed = stop.changed() => {
                    let requested = stop.borrow().clone();
                    match (changed, requested) {
                        (_, Some(reason)) => break reason,
                        (Err(_), None) => break StopReason::Requested,
                        (Ok(()), None) => {}
                    }
                }
            }
        };
        self.finish(&mut ring, &mut reports, &reason).await;
        self.read_capture_counts();
        let report = self.report_now();
        self.control.publish(&report);
        (reason, report)
    }

    /// Lets the flows in replay end (their queues are closed), for at most
    /// a response timeout and a margin, so the last answers count; then
    /// ends every replay.
    async fn finish(
        &mut self,
        ring: &mut RingReader,
        reports: &mut mpsc::UnboundedReceiver<Report>,
        reason: &StopReason,
    ) {
        // Nothing new is copied once the run stops; what is in the ring
        // already is drained below.
        self.control.stop_capture();
        // The idle color is not idle any more, or not fit to be asked:
        // not one more request goes to it, and the records still in the
        // ring are left there.
        let at_once = matches!(
            reason,
            StopReason::Switched | StopReason::IdleUnhealthy(_) | StopReason::ServiceGone(_)
        );
        if at_once {
            self.replays.abort_all();
        } else {
            ring.drain(|bytes| self.record(bytes));
        }
        let flows: Vec<FlowKey> = self.flows.keys().copied().collect();
        for key in flows {
            self.close_flow(&key, monotonic_ns());
        }
        // A response timeout, and a margin for the requests the drain just
        // queued, which start their timeout only now (a flow's second
        // queued request may still miss it: it is not compared).
        let deadline = tokio::time::Instant::now()
            + self.options.response_timeout.min(Duration::from_secs(10))
            + FINISH_MARGIN;
        while !at_once && self.inflight > 0 {
            match tokio::time::timeout_at(deadline, reports.recv()).await {
                Ok(Some(report)) => self.report(report),
                _ => break,
            }
        }
        self.replays.abort_all();
        let flows: Vec<u64> = self.pairs.keys().copied().collect();
        for flow in flows {
            self.flush_pairs(flow);
        }
    }

    /// One ring record.
    fn record(&mut self, bytes: &[u8]) {
        let record = match capture::parse(bytes) {
            Ok(record) => record,
            Err(_) => {
                self.counts.bad_records += 1;
                return;
            }
        };
        match (record.origin, record.header.key.proto) {
            (Origin::Live, IPPROTO_UDP) => {}
            (Origin::Live, _) => self.live_reply(&record),
            (Origin::Client, IPPROTO_UDP) => self.datagram(&record),
            (Origin::Client, _) => {
                if let Some(flow) = self.flows.get_mut(&record.header.key) {
                    flow.last_activity_ns = record.header.at_ns;
                }
                self.reassembler.push(&record.segment(), &mut self.events);
                // At once, not after the batch: the live color's replies
                // later in the batch answer the requests this completes.
                self.settle();
            }
        }
    }

    /// Acts on what the reassembler made of the records read.
    fn settle(&mut self) {
        let events = std::mem::take(&mut self.events);
        for event in &events {
            match event {
                FlowEvent::Opened { key, at_ns } => self.open_flow(key, false, *at_ns),
                FlowEvent::Data { key, bytes, at_ns } => self.client_bytes(key, bytes, *at_ns),
                FlowEvent::Closed { key, at_ns } => self.close_flow(key, *at_ns),
                FlowEvent::Abandoned { key, .. } => self.close_flow(key, monotonic_ns()),
            }
        }
        self.events = events;
        self.events.clear();
    }

    /// A sampled flow begins: replayed if a slot and a backend are free.
    /// A TCP flow is read as HTTP until its first line says otherwise.
    fn open_flow(&mut self, key: &FlowKey, udp: bool, at_ns: u64) {
        if self.flows.contains_key(key) {
            self.close_flow(key, at_ns);
        }
        if self.inflight >= self.options.max_inflight {
            self.counts.flows_over_inflight += 1;
            self.reassembler.forget(key);
            return;
        }
        let Some(backend) = self.control.backend(flow_hash(key)) else {
            self.counts.flows_without_backend += 1;
            self.reassembler.forget(key);
            return;
        };
        let id = self.next_flow;
        self.next_flow += 1;
        let (jobs, queue) = mpsc::channel(QUEUED_JOBS);
        let replay = Replay {
            flow: id,
            backend,
            response_timeout: self.options.response_timeout,
            idle_timeout: self.options.idle_timeout,
            counters: self.replay_counters.clone(),
            reports: self.reports_sender.clone(),
        };
        self.replays.spawn(replay.run(queue));
        self.inflight += 1;
        self.counts.flows_replayed += 1;
        let stream = if udp {
            Stream::Udp
        } else {
            Stream::Http(RequestParser::new(self.options.max_buffered_bytes / 4))
        };
        self.flows.insert(
            *key,
            Flow {
                id,
                stream,
                jobs,
                live: LiveExchanges::default(),
                requests: 0,
                last_activity_ns: at_ns,
            },
        );
        self.pairs.insert(id, Pairs::default());
        self.bound_pairs();
    }

    fn client_bytes(&mut self, key: &FlowKey, bytes: &[u8], at_ns: u64) {
        let Some(flow) = self.flows.get_mut(key) else {
            return;
        };
        let mut jobs = Vec::new();
        let mut skipped = Vec::new();
        let mut live_answers = Vec::new();
        let mut not_http = false;
        if let Stream::Http(parser) = &mut flow.stream {
            let held_before = parser.buffered();
            let cut = cut_requests(parser, bytes);
            self.parser_bytes = self.parser_bytes - held_before + parser.buffered();
            match cut {
                Ok(requests) => {
                    for request in requests {
                        let index = flow.requests;
                        flow.requests += 1;
                        let answer = flow.live.request_sent(at_ns);
                        if let (Some(answer), Some(before)) = (answer, index.checked_sub(1)) {
                            live_answers.push((before, answer));
                        }
                        if self.options.allow.allows(&request.method, &request.target) {
                            jobs.push(Job::Request {
                                index,
                                method: request.method,
                                raw: request.raw,
                            });
                        } else {
                            skipped.push(index);
                        }
                    }
                }
                // A stream whose first line is not HTTP's is replayed as
                // bytes, from its first one: a service that is not HTTP.
                Err(_) if flow.requests == 0 && parser.is_not_http() => {
                    let Stream::Http(parser) = std::mem::replace(&mut flow.stream, Stream::Opaque)
                    else {
                        unreachable!("matched above");
                    };
                    self.parser_bytes -= parser.buffered();
                    flow.requests = 1;
                    flow.live.request_sent(at_ns);
                    jobs.push(Job::Bytes(parser.into_bytes()));
                }
                // Any other failure may hide a request the allow-list
                // refuses, and the stream cannot be cut into requests any
                // more: nothing more of it is replayed.
                Err(_) => not_http = true,
            }
        } else {
            if flow.requests == 0 {
                // A stream that is not HTTP is one exchange, from its first
                // byte on.
                flow.requests = 1;
                flow.live.request_sent(at_ns);
            }
            jobs.push(match flow.stream {
                Stream::Udp => Job::Datagram(bytes.to_vec()),
                _ => Job::Bytes(bytes.to_vec()),
            });
        }
        let id = flow.id;
        self.counts.requests_not_allowed += skipped.len() as u64;
        if let Some(pairs) = self.pairs.get_mut(&id) {
            pairs.skipped.extend(skipped);
        }
        for (index, answer) in live_answers {
            self.live_answer(id, index, answer);
        }
        if not_http {
            self.counts.flows_not_http += 1;
            self.close_flow(key, at_ns);
            return;
        }
        if self.held_bytes() > self.options.max_buffered_bytes {
            self.counts.flows_over_memory += 1;
            self.close_flow(key, at_ns);
            return;
        }
        for job in jobs {
            if !self.queue(key, job) {
                return;
            }
        }
    }

    /// Client bytes held now: out of order, in the parsers waiting for a
    /// request's end, and queued for replay.
    fn held_bytes(&self) -> usize {
        self.replay_counters.queued_bytes.load(Ordering::Relaxed)
            + self.reassembler.buffered_bytes()
            + self.parser_bytes
    }

    /// Queues a job for a flow's replay, within the byte bound; false when
    /// the flow had to be given up.
    fn queue(&mut self, key: &FlowKey, job: Job) -> bool {
        let len = match &job {
            Job::Request { raw, .. } => raw.len(),
            Job::Bytes(bytes) | Job::Datagram(bytes) => bytes.len(),
        };
        if self.held_bytes() + len > self.options.max_buffered_bytes {
            self.counts.flows_over_memory += 1;
            self.close_flow(key, monotonic_ns());
            return false;
        }
        let Some(flow) = self.flows.get(key) else {
            return false;
        };
        let queued = &self.replay_counters.queued_bytes;
        queued.fetch_add(len, Ordering::Relaxed);
        match flow.jobs.try_send(job) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Full(_)) => self.counts.flows_backlogged += 1,
            // The replay ended on its own (its backend was unreachable,
            // counted there).
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
        queued.fetch_sub(len, Ordering::Relaxed);
        self.close_flow(key, monotonic_ns());
        false
    }

    fn datagram(&mut self, record: &Record) {
        let key = record.header.key;
        let at_ns = record.header.at_ns;
        if let Some(flow) = self.flows.get_mut(&key) {
            flow.last_activity_ns = at_ns;
        } else {
            if self.refused.contains_key(&key) {
                return;
            }
            self.open_flow(&key, true, at_ns);
            if !self.flows.contains_key(&key) {
                if self.refused.len() >= MAX_REFUSED {
                    self.refused.clear();
                }
                self.refused.insert(key, at_ns);
                return;
            }
        }
        self.client_bytes(&key, record.payload, at_ns);
    }

    fn live_reply(&mut self, record: &Record) {
        let Some(flow) = self.flows.get_mut(&record.header.key) else {
            // The backend's FIN or last ACK after the client closed is no
            // answer left unmatched.
            if record.header.wire_len > 0 {
                self.counts.unmatched_replies += 1;
            }
            return;
        };
        // A long streamed answer keeps its flow from counting as idle.
        flow.last_activity_ns = record.header.at_ns;
        flow.live.reply_segment(
            record.seq(),
            record.header.wire_len,
            record.payload,
            record.header.at_ns,
        );
    }

    /// The client side of a flow ended (closed, abandoned, idle, or the run
    /// stopping): its last live answer is final, and its replay task ends
    /// once it has written what it was given.
    fn close_flow(&mut self, key: &FlowKey, at_ns: u64) {
        self.reassembler.forget(key);
        let Some(mut flow) = self.flows.remove(key) else {
            return;
        };
        if let Stream::Http(parser) = &flow.stream {
            self.parser_bytes -= parser.buffered();
        }
        let answer = flow.live.closed(at_ns);
        if let (Some(answer), Some(index)) = (answer, flow.requests.checked_sub(1))
            && !matches!(flow.stream, Stream::Udp)
        {
            self.live_answer(flow.id, index, answer);
        }
        if let Some(pairs) = self.pairs.get_mut(&flow.id) {
            pairs.client_done = true;
        }
        self.flush_if_done(flow.id);
    }

    fn live_answer(&mut self, flow: u64, index: u64, answer: Outcome) {
        let Some(pairs) = self.pairs.get_mut(&flow) else {
            return;
        };
        if pairs.skipped.contains(&index) {
            return;
        }
        match pairs.shadow.remove(&index) {
            Some(shadow) => self.comparison.pair(&answer, &shadow),
            None => {
                pairs.live.insert(index, answer);
            }
        }
    }

    fn report(&mut self, report: Report) {
        match report {
            Report::Outcome {
                flow,
                index,
                outcome,
            } => {
                let Some(pairs) = self.pairs.get_mut(&flow) else {
                    self.comparison.record_shadow_only(&outcome);
                    return;
                };
                match pairs.live.remove(&index) {
                    Some(live) => self.comparison.pair(&live, &outcome),
                    None => {
                        pairs.shadow.insert(index, outcome);
                    }
                }
            }
            Report::Finished { flow } => {
                self.inflight -= 1;
                if let Some(pairs) = self.pairs.get_mut(&flow) {
                    pairs.replay_done = true;
                }
                self.flush_if_done(flow);
            }
        }
    }

    fn flush_if_done(&mut self, flow: u64) {
        if self
            .pairs
            .get(&flow)
            .is_some_and(|pairs| pairs.client_done && pairs.replay_done)
        {
            self.flush_pairs(flow);
        }
    }

    /// Records a flow's answers that found no pair, and forgets the flow.
    fn flush_pairs(&mut self, flow: u64) {
        let Some(pairs) = self.pairs.remove(&flow) else {
            return;
        };
        for live in pairs.live.values() {
            self.comparison.record_live_only(live);
        }
        for shadow in pairs.shadow.values() {
            self.comparison.record_shadow_only(shadow);
        }
    }

    fn bound_pairs(&mut self) {
        while self.pairs.len() > MAX_PENDING_FLOWS {
            let oldest = *self.pairs.keys().next().expect("not empty");
            self.counts.pairs_dropped += 1;
            self.flush_pairs(oldest);
        }
    }

    /// Once a second: holes too old to fill, and flows quiet for longer than
    /// the idle timeout.
    fn expire(&mut self) {
        let now = monotonic_ns();
        self.reassembler.expire(now, &mut self.events);
        self.settle();
        let idle_ns = u64::try_from(self.options.idle_timeout.as_nanos()).unwrap_or(u64::MAX);
        let idle: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(_, flow)| now.saturating_sub(flow.last_activity_ns) > idle_ns)
            .map(|(key, _)| *key)
            .collect();
        for key in idle {
            self.counts.flows_idle += 1;
            self.close_flow(&key, now);
        }
        self.refused
            .retain(|_, at_ns| now.saturating_sub(*at_ns) <= idle_ns);
        while self.replays.try_join_next().is_some() {}
    }

    fn report_now(&self) -> ShadowReport {
        ShadowReport {
            capture: self.capture.clone(),
            reassembly: self.reassembler.counters(),
            engine: self.counts,
            replay: self.replay_counters.snapshot(),
            inflight: self.inflight,
            buffered_bytes: self.held_bytes(),
            reassembling: self.reassembler.flows(),
            comparison: self.comparison.summary(),
        }
    }
}

/// The requests `bytes` complete.
fn cut_requests(parser: &mut RequestParser, bytes: &[u8]) -> Result<Vec<Request>, HttpError> {
    parser.push(bytes)?;
    let mut requests = Vec::new();
    while let Some(request) = parser.next_request()? {
        requests.push(request);
    }
    Ok(requests)
}

#[cfg(test)]
mod tests {
    use bluegreen_common::{
        FAMILY_IPV4, IPPROTO_TCP, SHADOW_FROM_CLIENT, SHADOW_FROM_LIVE, ShadowHeader,
        wire::{TCP_ACK, TCP_FIN, TCP_SYN},
    };
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;
    use crate::shadow::options::SampleShare;

    /// The idle color as the engine sees it: one backend, never a reason to
    /// stop.
    struct OneBackend(SocketAddr);

    impl Control for OneBackend {
        fn backend(&mut self, _: u32) -> Option<SocketAddr> {
            Some(self.0)
        }
        fn check(&mut self) -> Option<StopReason> {
            None
        }
        fn stop_capture(&mut self) {}
        fn capture_counts(&mut self) -> BTreeMap<String, u64> {
            BTreeMap::new()
        }
        fn publish(&mut self, _: &ShadowReport) {}
    }

    fn key() -> FlowKey {
        key_of(40000)
    }

    fn key_of(client_port: u16) -> FlowKey {
        let mut key = FlowKey {
            proto: IPPROTO_TCP,
            family: FAMILY_IPV4,
            ..FlowKey::default()
        };
        key.client[..4].copy_from_slice(&[10, 200, 0, 2]);
        key.server[..4].copy_from_slice(&[10, 200, 0, 100]);
        key.client_port = client_port.to_be_bytes();
        key.server_port = 8080u16.to_be_bytes();
        key
    }

    fn record(kind: u8, seq: u32, flags: u8, payload: &[u8], wire_len: u32, at_ms: u64) -> Vec<u8> {
        record_on(key(), kind, seq, flags, payload, wire_len, at_ms)
    }

    /// A whole client segment of the flow from `client_port`, now.
    fn segment(client_port: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        segment_at(client_port, seq, flags, payload, monotonic_ns() / 1_000_000)
    }

    /// A whole client segment of the flow from `client_port`, at `at_ms`.
    fn segment_at(client_port: u16, seq: u32, flags: u8, payload: &[u8], at_ms: u64) -> Vec<u8> {
        let wire_len = payload.len() as u32;
        record_on(
            key_of(client_port),
            SHADOW_FROM_CLIENT,
            seq,
            flags,
            payload,
            wire_len,
            at_ms,
        )
    }

    fn record_on(
        key: FlowKey,
        kind: u8,
        seq: u32,
        flags: u8,
        payload: &[u8],
        wire_len: u32,
        at_ms: u64,
    ) -> Vec<u8> {
        let header = ShadowHeader {
            at_ns: at_ms * 1_000_000,
            key,
            seq: seq.to_be_bytes(),
            wire_len,
            captured: payload.len() as u16,
            kind,
            tcp_flags: flags,
            counter_slot: 0,
            reserved: [0; 2],
        };
        capture::encode(&header, payload)
    }

    /// An idle backend that answers one request with a 503 after 20 ms,
    /// and hands back what it was sent.
    async fn slow_failing_backend() -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("bound");
        let served = tokio::spawn(async move {
            let (mut connection, _) = listener.accept().await.expect("the replay connects");
            let mut received = Vec::new();
            let mut buffer = [0; 1024];
            while !received.ends_with(b"\r\n\r\n") {
                let read = connection.read(&mut buffer).await.expect("the request");
                assert!(read > 0, "closed before the request ended: {received:?}");
                received.extend_from_slice(&buffer[..read]);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            connection
                .write_all(b"HTTP/1.1 503 Busy\r\nContent-Length: 2\r\n\r\nno")
                .await
                .expect("the answer");
            received
        });
        (address, served)
    }

    #[tokio::test]
    async fn a_request_is_replayed_to_the_idle_color_and_paired_with_the_live_answer() {
        let (backend, served) = slow_failing_backend().await;
        let options = ShadowOptions::new(SampleShare {
            basis_points: 10_000,
        });
        let mut engine = Engine::new(OneBackend(backend), options);
        let mut reports = engine.reports.take().expect("fresh");
        let request = b"GET /v1/models HTTP/1.1\r\nHost: vip\r\n\r\n";
        let isn = u32::MAX - 4;
        let (first, second) = request.split_at(10);
        // The second half first: it waits for the first.
        for bytes in [
            record(SHADOW_FROM_CLIENT, isn, TCP_SYN, b"", 0, 1_000),
            record(
                SHADOW_FROM_CLIENT,
                isn.wrapping_add(11),
                TCP_ACK,
                second,
                second.len() as u32,
                1_002,
            ),
            record(
                SHADOW_FROM_CLIENT,
                isn.wrapping_add(1),
                TCP_ACK,
                first,
                first.len() as u32,
                1_003,
            ),
            record(
                SHADOW_FROM_LIVE,
                7_000,
                TCP_ACK,
                b"HTTP/1.1 200 OK\r",
                1_000,
                1_010,
            ),
            record(
                SHADOW_FROM_LIVE,
                8_000,
                TCP_ACK,
                b"xxxxxxxxxxxxxxxx",
                500,
                1_030,
            ),
        ] {
            engine.record(&bytes);
        }
        let fin = isn.wrapping_add(1 + request.len() as u32);
        engine.record(&record(
            SHADOW_FROM_CLIENT,
            fin,
            TCP_FIN | TCP_ACK,
            b"",
            0,
            1_040,
        ));
        while !engine.pairs.is_empty() {
            let report = tokio::time::timeout(Duration::from_secs(5), reports.recv())
                .await
                .expect("the replay reports within the response timeout")
                .expect("the engine holds a sender");
            engine.report(report);
        }
        assert_eq!(
            served.await.expect("served"),
            request,
            "the idle color gets the client's bytes, in order, once"
        );
        let summary = engine.comparison.summary();
        assert_eq!(
            (summary.paired, summary.mismatched_status),
            (1, 1),
            "200 against 503"
        );
        assert_eq!(
            (summary.live.status_2xx, summary.shadow.status_5xx),
            (1, 1),
            "{summary:?}"
        );
        assert_eq!(
            summary.live.ttfb_p50_ms,
            Some(7.0),
            "from the request's last segment (1,003 ms) to the first reply (1,010 ms)"
        );
        assert_eq!(summary.live.response_bytes, 1_500, "two reply segments");
        let replayed = summary.shadow.ttfb_p50_ms.expect("timed");
        assert!(
            (20.0..1_000.0).contains(&replayed),
            "the idle backend's 20 ms delay: {replayed} ms"
        );
        assert_eq!(summary.shadow.response_bytes, 42, "the whole 503 answer");
        assert_eq!(engine.counts.flows_replayed, 1);
    }

    #[tokio::test]
    async fn requests_off_the_allow_list_are_not_replayed_or_compared() {
        let (backend, _served) = slow_failing_backend().await;
        let mut engine = Engine::new(
            OneBackend(backend),
            ShadowOptions::new(SampleShare {
                basis_points: 10_000,
            }),
        );
        let request = b"DELETE /v1/files/7 HTTP/1.1\r\nHost: vip\r\n\r\n";
        engine.record(&record(SHADOW_FROM_CLIENT, 100, TCP_SYN, b"", 0, 1));
        engine.record(&record(
            SHADOW_FROM_CLIENT,
            101,
            TCP_ACK,
            request,
            request.len() as u32,
            2,
        ));
        engine.record(&record(
            SHADOW_FROM_LIVE,
            9,
            TCP_ACK,
            b"HTTP/1.1 204 No ",
            40,
            3,
        ));
        engine.record(&record(
            SHADOW_FROM_CLIENT,
            101 + request.len() as u32,
            TCP_FIN,
            b"",
            0,
            4,
        ));
        assert_eq!(engine.counts.requests_not_allowed, 1);
        let summary = engine.comparison.summary();
        assert_eq!(
            (summary.live.requests, summary.paired),
            (0, 0),
            "a skipped request's live answer is not compared with nothing"
        );
    }

    fn every_flow() -> ShadowOptions {
        ShadowOptions::new(SampleShare {
            basis_points: 10_000,
        })
    }

    /// An idle backend that counts the requests it is sent, each answered
    /// after 100 ms.
    async fn counting_backend() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("bound");
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut connection, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buffer = [0; 4096];
                    while let Ok(read) = connection.read(&mut buffer).await
                        && read > 0
                    {
                        let requests = buffer[..read].windows(4).filter(|w| w == b"\r\n\r\n");
                        for _ in requests {
                            counted.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                            if connection.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (address, seen)
    }

    #[tokio::test]
    async fn a_request_the_parser_refuses_ends_its_flows_replay() {
        let (backend, seen) = counting_backend().await;
        let mut engine = Engine::new(OneBackend(backend), every_flow());
        // A DELETE the allow-list refuses, framed so that the parser
        // refuses it too: it must not reach the idle color as bytes.
        let refused =
            b"DELETE /accounts/42 HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 1\r\n\r\n";
        engine.record(&segment(41000, 0, TCP_SYN, b""));
        engine.record(&segment(41000, 1, TCP_ACK, refused));
        // A stream that is not HTTP at all is replayed as bytes.
        engine.record(&segment(41001, 0, TCP_SYN, b""));
        engine.record(&segment(
            41001,
            1,
            TCP_ACK,
            b"\x16\x03\x01 not http\r\n\r\n",
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(engine.counts.flows_not_http, 1, "the DELETE's flow");
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1,
            "only the stream that is not HTTP reached the idle color"
        );
    }

    #[tokio::test]
    async fn requests_waiting_for_their_end_count_toward_the_memory_bound() {
        let (backend, _seen) = counting_backend().await;
        let mut options = every_flow();
        options.max_buffered_bytes = ShadowOptions::MIN_BUFFERED_BYTES;
        let mut engine = Engine::new(OneBackend(backend), options);
        let head = b"POST /v1/completions HTTP/1.1\r\nContent-Length: 250000\r\n\r\n";
        let chunk = vec![b'a'; 9000];
        for port in 42000..42016 {
            engine.record(&segment(port, 0, TCP_SYN, b""));
            engine.record(&segment(port, 1, TCP_ACK, head));
            let mut seq = 1 + head.len() as u32;
            for _ in 0..27 {
                engine.record(&segment(port, seq, TCP_ACK, &chunk));
                seq += chunk.len() as u32;
            }
        }
        let report = engine.report_now();
        assert!(
            report.buffered_bytes <= ShadowOptions::MIN_BUFFERED_BYTES,
            "{} bytes held",
            report.buffered_bytes
        );
        assert!(
            report.engine.flows_over_memory >= 12,
            "16 incomplete requests of 250 kB cannot all be held in 1 MiB: {:?}",
            report.engine
        );
    }

    #[tokio::test]
    async fn nothing_is_replayed_once_the_engine_is_gone() {
        let (backend, seen) = counting_backend().await;
        let mut engine = Engine::new(OneBackend(backend), every_flow());
        let request = b"GET /v1/models HTTP/1.1\r\nHost: vip\r\n\r\n";
        engine.record(&segment(43000, 0, TCP_SYN, b""));
        let mut seq = 1;
        for _ in 0..10 {
            engine.record(&segment(43000, seq, TCP_ACK, request));
            seq += request.len() as u32;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        let before = seen.load(Ordering::SeqCst);
        drop(engine);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            seen.load(Ordering::SeqCst) <= before + 1,
            "{before} requests seen when the run ended, {} after: its replays go on",
            seen.load(Ordering::SeqCst)
        );
    }

    #[tokio::test]
    async fn a_streamed_answer_keeps_its_flow_from_idling_out() {
        let (backend, _seen) = counting_backend().await;
        let mut options = every_flow();
        options.idle_timeout = Duration::from_secs(1);
        let mut engine = Engine::new(OneBackend(backend), options);
        let now_ms = monotonic_ns() / 1_000_000;
        let request = b"POST /v1/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        for (port, answering) in [(44000, true), (44001, false)] {
            let key = key_of(port);
            engine.record(&segment_at(port, 0, TCP_SYN, b"", now_ms - 3_000));
            engine.record(&segment_at(port, 1, TCP_ACK, request, now_ms - 3_000));
            if answering {
                // The live color still streams its answer; the client only
                // ACKs (nothing the reassembler delivers).
                let chunk = b"data: {\"t\": 1}\n";
                engine.record(&record_on(
                    key,
                    SHADOW_FROM_LIVE,
                    9,
                    TCP_ACK,
                    chunk,
                    400,
                    now_ms,
                ));
            }
        }
        engine.expire();
        assert_eq!(
            engine.counts.flows_idle, 1,
            "only the flow without a reply for 3 s is closed as idle"
        );
        assert!(
            engine.flows.contains_key(&key_of(44000)),
            "the streamed one is kept"
        );
    }
}

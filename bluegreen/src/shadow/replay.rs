//! The replay side of one sampled flow: its own connection to a backend of
//! the idle color, the client's requests written in order, the answers
//! read, timed and discarded. Nothing here can reach the live connection:
//! the flow's bytes were copies, and this task only ever talks to the idle
//! color.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    sync::mpsc,
    time::{Instant, timeout, timeout_at},
};

use super::{figures::Outcome, http::ResponseParser};

/// What the engine hands a flow's replay task, in the client's order.
#[derive(Debug)]
pub enum Job {
    /// One HTTP request, whole, numbered within its flow.
    Request {
        index: u64,
        method: String,
        raw: Vec<u8>,
    },
    /// Bytes of a stream that is not HTTP, replayed as they come.
    Bytes(Vec<u8>),
    /// One UDP datagram.
    Datagram(Vec<u8>),
}

impl Job {
    fn len(&self) -> usize {
        match self {
            Job::Request { raw, .. } => raw.len(),
            Job::Bytes(bytes) | Job::Datagram(bytes) => bytes.len(),
        }
    }
}

/// What a replay task tells the engine.
#[derive(Debug)]
pub enum Report {
    /// The idle color's answer to one exchange: a request of an HTTP flow
    /// (by its index), or the whole of a stream that is not HTTP (index 0),
    /// each compared with the live color's.
    Outcome {
        flow: u64,
        index: u64,
        outcome: Outcome,
    },
    /// The task has ended; no more reports of this flow follow.
    Finished { flow: u64 },
}

/// Counted by every replay task, read by the engine's report.
#[derive(Debug, Default)]
pub struct ReplayCounters {
    pub requests: AtomicU64,
    pub connect_failures: AtomicU64,
    pub timeouts: AtomicU64,
    pub malformed_responses: AtomicU64,
    pub datagrams: AtomicU64,
    /// Datagrams the idle color sent back (UDP answers are counted, not
    /// compared: the live color's are not followed).
    pub datagram_answers: AtomicU64,
    /// Client bytes queued for replay and not yet written, over all flows.
    pub queued_bytes: AtomicUsize,
}

/// A snapshot of [`ReplayCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayCounts {
    pub requests: u64,
    pub connect_failures: u64,
    pub timeouts: u64,
    pub malformed_responses: u64,
    pub datagrams: u64,
    pub datagram_answers: u64,
}

impl ReplayCounters {
    pub fn snapshot(&self) -> ReplayCounts {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ReplayCounts {
            requests: read(&self.requests),
            connect_failures: read(&self.connect_failures),
            timeouts: read(&self.timeouts),
            malformed_responses: read(&self.malformed_responses),
            datagrams: read(&self.datagrams),
            datagram_answers: read(&self.datagram_answers),
        }
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One flow's replay, as the engine starts it.
pub struct Replay {
    pub flow: u64,
    pub backend: SocketAddr,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub counters: Arc<ReplayCounters>,
    pub reports: mpsc::UnboundedSender<Report>,
}

impl Replay {
    /// Runs until the engine drops the flow's sender, the flow is idle for
    /// `idle_timeout`, or the backend cannot be reached.
    pub async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        let mut connection: Option<TcpStream> = None;
        let mut stream = StreamExchange::default();
        let mut udp: Option<UdpSocket> = None;
        let mut answer = vec![0; 64 * 1024];
        loop {
            let next = timeout(self.idle_timeout, jobs.recv());
            let job = match &udp {
                // The idle color's answers to datagrams are read as they
                // come, between datagrams, and counted.
                Some(socket) => tokio::select! {
                    job = next => job,
                    Ok(_) = socket.recv(&mut answer) => {
                        ReplayCounters::count(&self.counters.datagram_answers);
                        continue;
                    }
                },
                None => next.await,
            };
            let job = match job {
                Ok(Some(job)) => job,
                Ok(None) | Err(_) => break,
            };
            self.counters
                .queued_bytes
                .fetch_sub(job.len(), Ordering::Relaxed);
            match job {
                Job::Request { index, method, raw } => {
                    let outcome = self.exchange(&mut connection, &method, &raw).await;
                    self.report(index, outcome);
                }
                Job::Bytes(bytes) => {
                    if !self
                        .write_stream(&mut connection, &mut stream, &bytes)
                        .await
                    {
                        break;
                    }
                }
                Job::Datagram(bytes) => {
                    if !self.datagram(&mut udp, &bytes).await {
                        break;
                    }
                }
            }
        }
        // Whatever is still queued is not replayed: give its bytes back.
        jobs.close();
        while let Ok(job) = jobs.try_recv() {
            self.counters
                .queued_bytes
                .fetch_sub(job.len(), Ordering::Relaxed);
        }
        if let (Some(connection), Some(_)) = (connection, stream.first_write) {
            let outcome = self.finish_stream(connection, stream).await;
            self.report(0, outcome);
        }
        let _ = self.reports.send(Report::Finished { flow: self.flow });
    }

    fn report(&self, index: u64, outcome: Outcome) {
        let _ = self.reports.send(Report::Outcome {
            flow: self.flow,
            index,
            outcome,
        });
    }

    fn failed(&self) -> Outcome {
        Outcome {
            status: None,
            ttfb_ns: None,
            total_ns: None,
            bytes: 0,
            failed: true,
        }
    }

    async fn connect(&self, connection: &mut Option<TcpStream>) -> bool {
        if connection.is_some() {
            return true;
        }
        match timeout(self.response_timeout, TcpStream::connect(self.backend)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                *connection = Some(stream);
                true
            }
            _ => {
                ReplayCounters::count(&self.counters.connect_failures);
                false
            }
        }
    }

    /// One request and its answer, timed from the request's last byte
    /// written, as the live color's are timed from its last byte seen.
    async fn exchange(
        &self,
        connection: &mut Option<TcpStream>,
        method: &str,
        raw: &[u8],
    ) -> Outcome {
        ReplayCounters::count(&self.counters.requests);
        if !self.connect(connection).await {
            return self.failed();
        }
        let stream = connection.as_mut().expect("connected above");
        let deadline = Instant::now() + self.response_timeout;
        if !matches!(
            timeout_at(deadline, stream.write_all(raw)).await,
            Ok(Ok(()))
        ) {
            // A connection the backend closed since the last request: one
            // fresh attempt, as a client's keep-alive pool would make.
            *connection = None;
            if !self.connect(connection).await {
                return self.failed();
            }
            let stream = connection.as_mut().expect("connected above");
            if !matches!(
                timeout_at(deadline, stream.write_all(raw)).await,
                Ok(Ok(()))
            ) {
                *connection = None;
                return self.failed();
            }
        }
        let stream = connection.as_mut().expect("connected above");
        let sent = Instant::now();
        let deadline = sent + self.response_timeout;
        let mut parser = ResponseParser::new(method);
        let mut buffer = vec![0; 16 * 1024];
        let mut first_byte = None;
        let mut bytes = 0u64;
        let mut status = None;
        loop {
            let read = match timeout_at(deadline, stream.read(&mut buffer)).await {
                Err(_) => {
                    ReplayCounters::count(&self.counters.timeouts);
                    *connection = None;
                    return Outcome {
                        status,
                        ttfb_ns: first_byte.map(|at: Instant| nanos(at - sent)),
                        ..self.failed()
                    };
                }
                Ok(Err(_)) | Ok(Ok(0)) => {
                    *connection = None;
                    let whole = first_byte.is_some() && parser.finish_on_close();
                    return Outcome {
                        status,
                        ttfb_ns: first_byte.map(|at: Instant| nanos(at - sent)),
                        total_ns: whole.then(|| nanos(sent.elapsed())),
                        bytes,
                        failed: !whole,
                    };
                }
                Ok(Ok(read)) => read,
            };
            first_byte.get_or_insert_with(Instant::now);
            match parser.push(&buffer[..read]) {
                Ok(progress) => {
                    bytes += progress.consumed as u64;
                    status = status.or(progress.status);
                    if progress.complete {
                        return Outcome {
                            status,
                            ttfb_ns: first_byte.map(|at| nanos(at - sent)),
                            total_ns: Some(nanos(sent.elapsed())),
                            bytes,
                            failed: false,
                        };
                    }
                }
                Err(_) => {
                    ReplayCounters::count(&self.counters.malformed_responses);
                    *connection = None;
                    return Outcome {
                        status,
                        ttfb_ns: first_byte.map(|at| nanos(at - sent)),
                        ..self.failed()
                    };
                }
            }
        }
    }

    /// Writes a stream that is not HTTP, reading (and discarding) whatever
    /// the backend has answered so far; false when the backend is gone.
    async fn write_stream(
        &self,
        connection: &mut Option<TcpStream>,
        stream: &mut StreamExchange,
        bytes: &[u8],
    ) -> bool {
        if !self.connect(connection).await {
            return false;
        }
        let (mut reader, mut writer) = connection.as_mut().expect("connected above").split();
        stream.first_write.get_or_insert_with(Instant::now);
        let deadline = Instant::now() + self.response_timeout;
        let mut written = 0;
        let mut buffer = vec![0; 16 * 1024];
        while written < bytes.len() {
            tokio::select! {
                result = timeout_at(deadline, writer.write(&bytes[written..])) => match result {
                    Ok(Ok(n)) if n > 0 => written += n,
                    _ => return false,
                },
                // Read while writing: a backend that answers as it reads
                // would otherwise stall on a full socket buffer.
                Ok(read) = reader.read(&mut buffer), if !stream.ended => stream.answered(read),
            }
        }
        true
    }

    /// The end of a stream that is not HTTP: the write side is shut, and
    /// the answer read to its end (or the response timeout).
    async fn finish_stream(
        &self,
        mut connection: TcpStream,
        mut stream: StreamExchange,
    ) -> Outcome {
        let _ = connection.shutdown().await;
        let started = stream
            .first_write
            .expect("only a stream that wrote is finished");
        let deadline = Instant::now() + self.response_timeout;
        let mut buffer = vec![0; 16 * 1024];
        let completed = loop {
            match timeout_at(deadline, connection.read(&mut buffer)).await {
                Ok(Ok(0)) => break true,
                Ok(Ok(read)) => stream.answered(read),
                Ok(Err(_)) => break false,
                Err(_) => {
                    ReplayCounters::count(&self.counters.timeouts);
                    break false;
                }
            }
        };
        Outcome {
            status: None,
            ttfb_ns: stream.first_byte.map(|at| nanos(at - started)),
            total_ns: stream.last_byte.map(|at| nanos(at - started)),
            bytes: stream.bytes,
            failed: !completed || stream.first_byte.is_none(),
        }
    }

    /// Sends one datagram, without waiting for an answer (a UDP service
    /// may never answer); false when the idle backend cannot be reached.
    async fn datagram(&self, socket: &mut Option<UdpSocket>, bytes: &[u8]) -> bool {
        ReplayCounters::count(&self.counters.datagrams);
        if socket.is_none() {
            let any: SocketAddr = if self.backend.is_ipv4() {
                "0.0.0.0:0".parse().expect("an address")
            } else {
                "[::]:0".parse().expect("an address")
            };
            match UdpSocket::bind(any).await {
                Ok(bound) if bound.connect(self.backend).await.is_ok() => *socket = Some(bound),
                _ => {
                    ReplayCounters::count(&self.counters.connect_failures);
                    return false;
                }
            }
        }
        let socket = socket.as_ref().expect("bound above");
        socket.send(bytes).await.is_ok()
    }
}

/// The answer so far to a stream that is not HTTP.
#[derive(Default)]
struct StreamExchange {
    first_write: Option<Instant>,
    first_byte: Option<Instant>,
    last_byte: Option<Instant>,
    bytes: u64,
    /// The backend shut its side: nothing more to read.
    ended: bool,
}

impl StreamExchange {
    fn answered(&mut self, read: usize) {
        if read == 0 {
            self.ended = true;
            return;
        }
        let now = Instant::now();
        self.first_byte.get_or_insert(now);
        self.last_byte = Some(now);
        self.bytes += read as u64;
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

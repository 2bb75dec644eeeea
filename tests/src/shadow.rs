//! Shadow traffic's test bed: HTTP/1.1 backends that keep every byte each
//! connection sent them, clients that keep every byte they sent, and a
//! `bluegreen shadow run` in the foreground as a child process.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, ExitStatus},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    cli::{Bluegreen, CliRun},
    fixture::{BACKEND_PORT, Fixture, TIMEOUT, strs, up_args, vip},
    http::{KeepAlive, accept_loop, woke_to_poll},
    netns::{Namespace, Topology},
};

/// How often the backends' reads wake up to notice they must stop.
const POLL: Duration = Duration::from_millis(20);

/// How a [`RecordingBackend`] answers each request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// `status` with `body`, `delay` after the request's last byte came.
    Answer {
        status: u16,
        body: String,
        delay: Duration,
    },
    /// Nothing, ever: the connection stays open, unanswered.
    Never,
}

impl Reply {
    /// `200 OK` with `body`, at once.
    pub fn ok(body: &str) -> Reply {
        Reply::ok_after(body, Duration::ZERO)
    }

    /// `200 OK` with `body`, `delay` after each request.
    pub fn ok_after(body: &str, delay: Duration) -> Reply {
        Reply::Answer {
            status: 200,
            body: body.to_owned(),
            delay,
        }
    }
}

/// What one connection to a [`RecordingBackend`] sent it.
#[derive(Clone, Debug, Default)]
pub struct Received {
    /// Every byte, in order.
    pub bytes: Vec<u8>,
    /// The requests framed from them: method and path.
    pub requests: Vec<(String, String)>,
}

/// An HTTP/1.1 backend on `[::]:port` in its namespace that keeps what
/// every connection sent, until dropped.
pub struct RecordingBackend {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    received: Arc<Mutex<Vec<Received>>>,
    answered: Arc<AtomicUsize>,
}

impl RecordingBackend {
    pub fn start(namespace: &Namespace, port: u16, reply: Reply) -> RecordingBackend {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, received, answered) = (stop.clone(), received.clone(), answered.clone());
            namespace.spawn(move || {
                let listener = TcpListener::bind(("::", port)).expect("bind recording backend");
                listener
                    .set_nonblocking(true)
                    .expect("non-blocking listener");
                ready_tx.send(()).expect("signal ready");
                let serve = {
                    let stop = stop.clone();
                    move |stream| {
                        let _ = record_connection(stream, &stop, &reply, &received, &answered);
                    }
                };
                accept_loop(listener, &stop, serve);
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("recording backend did not start within 5 s");
        RecordingBackend {
            stop,
            thread: Some(thread),
            received,
            answered,
        }
    }

    /// What each connection sent so far, in the order they were accepted.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("received lock").clone()
    }

    /// Every request framed so far, over all connections: method and path.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.received()
            .into_iter()
            .flat_map(|connection| connection.requests)
            .collect()
    }

    /// Requests answered so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for RecordingBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn record_connection(
    mut stream: TcpStream,
    stop: &AtomicBool,
    reply: &Reply,
    received: &Mutex<Vec<Received>>,
    answered: &AtomicUsize,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL))?;
    let index = {
        let mut received = received.lock().expect("received lock");
        received.push(Received::default());
        received.len() - 1
    };
    let mut pending = Vec::new();
    let mut buffer = vec![0; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let read = match stream.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(read) => read,
            Err(error) if woke_to_poll(&error) => {
                continue;
            }
            Err(error) => return Err(error),
        };
        pending.extend_from_slice(&buffer[..read]);
        let mut framed = Vec::new();
        while let Some((length, method, path)) = frame_request(&pending) {
            pending.drain(..length);
            framed.push((method, path));
        }
        {
            let mut received = received.lock().expect("received lock");
            let connection = &mut received[index];
            connection.bytes.extend_from_slice(&buffer[..read]);
            connection.requests.extend(framed.iter().cloned());
        }
        for _ in &framed {
            let Reply::Answer {
                status,
                body,
                delay,
            } = reply
            else {
                continue;
            };
            let answer_at = Instant::now() + *delay;
            while Instant::now() < answer_at {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                std::thread::sleep(POLL.min(answer_at.saturating_duration_since(Instant::now())));
            }
            // One write: several small ones would wait on Nagle and the
            // client's delayed ACK.
            let response = format!(
                "HTTP/1.1 {status} Test\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes())?;
            answered.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// The first whole request in `bytes` (a head and a Content-Length body):
/// its length, method and path; `None` until it is all there.
fn frame_request(bytes: &[u8]) -> Option<(usize, String, String)> {
    let head_end = bytes.windows(4).position(|window| window == b"\r\n\r\n")? + 4;
    // Lossy, not a panic in a connection thread: a mangled head shows as
    // a byte difference in the test's comparison of streams.
    let head = String::from_utf8_lossy(&bytes[..head_end]);
    let mut lines = head.split("\r\n");
    let mut words = lines.next()?.split(' ');
    let (method, path) = (words.next()?.to_owned(), words.next()?.to_owned());
    let body_length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, value)| value.trim().parse::<usize>().unwrap_or(0));
    let length = head_end + body_length;
    (bytes.len() >= length).then_some((length, method, path))
}

/// A request a test client sends.
#[derive(Clone, Debug)]
pub enum Ask {
    Get(String),
    /// A JSON body.
    Post(String, String),
    /// Another method, without a body (`DELETE /v1/thing`).
    Other(String, String),
}

impl Ask {
    /// `POST path` with a JSON completion request of about `size` bytes,
    /// its text made from `seed` so that no two requests are alike.
    pub fn completion(path: &str, size: usize, seed: usize) -> Ask {
        let filler: String = (0..size)
            .map(|at| char::from(b'a' + ((at * 31 + seed * 7) % 26) as u8))
            .collect();
        Ask::Post(
            path.to_owned(),
            format!(r#"{{"model":"test","seed":{seed},"prompt":"{filler}"}}"#),
        )
    }

    /// The request on the wire.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Ask::Get(path) => format!("GET {path} HTTP/1.1\r\nHost: bluegreen\r\n\r\n"),
            Ask::Post(path, body) => format!(
                "POST {path} HTTP/1.1\r\nHost: bluegreen\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
            Ask::Other(method, path) => {
                format!("{method} {path} HTTP/1.1\r\nHost: bluegreen\r\nContent-Length: 0\r\n\r\n")
            }
        }
        .into_bytes()
    }
}

/// One answer as a client saw it.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// From the request's first byte written to the answer's last read.
    pub latency: Duration,
}

/// One client connection: every byte it sent (a request whose write
/// failed counted whole: the connection's checks fail on its answer
/// anyway), and what came back.
#[derive(Clone, Debug)]
pub struct Conversation {
    pub sent: Vec<u8>,
    /// One per request sent, in order; a failure ends the connection.
    pub answers: Vec<Result<Answer, String>>,
}

impl Conversation {
    /// The requests of `asks` on one new keep-alive connection to `target`,
    /// one after the other.
    pub fn hold(target: SocketAddr, asks: &[Ask]) -> Conversation {
        let mut conversation = Conversation {
            sent: Vec::new(),
            answers: Vec::new(),
        };
        let mut connection = match KeepAlive::connect(target, TIMEOUT) {
            Ok(connection) => connection,
            Err(error) => {
                conversation.answers.push(Err(format!("connect: {error}")));
                return conversation;
            }
        };
        for ask in asks {
            let request = ask.bytes();
            let started = Instant::now();
            let outcome = connection.exchange(&request);
            conversation.sent.extend_from_slice(&request);
            match outcome {
                Ok((status, body)) => conversation.answers.push(Ok(Answer {
                    status,
                    body,
                    latency: started.elapsed(),
                })),
                Err(error) => {
                    conversation.answers.push(Err(error.to_string()));
                    break;
                }
            }
        }
        conversation
    }
}

/// Every conversation of a bounded client run, and what they add up to.
#[derive(Debug)]
pub struct Conversations(pub Vec<Conversation>);

impl Conversations {
    /// `plans` (one connection each, its requests) held to the VIP from
    /// `namespace` by `workers` threads; plans not begun within `limit`
    /// are left out (the run's checks then see too few).
    pub fn run(
        namespace: &Namespace,
        workers: usize,
        plans: Vec<Vec<Ask>>,
        limit: Duration,
    ) -> Self {
        let plans = Arc::new(plans);
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let workers: Vec<_> = (0..workers)
            .map(|_| {
                let (plans, next) = (plans.clone(), next.clone());
                namespace.spawn(move || {
                    let mut held = Vec::new();
                    while started.elapsed() < limit {
                        let Some(asks) = plans.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        held.push(Conversation::hold(vip(), asks));
                    }
                    held
                })
            })
            .collect();
        Conversations(
            workers
                .into_iter()
                .flat_map(|worker| worker.join().expect("client worker panicked"))
                .collect(),
        )
    }

    /// Panics unless `requests` requests were all answered `200` with
    /// `body` (the live color's).
    pub fn assert_all_answered_by(&self, requests: usize, body: &str) {
        let answers: Vec<_> = self.0.iter().flat_map(|held| &held.answers).collect();
        let failures: Vec<_> = answers
            .iter()
            .filter(|answer| !matches!(answer, Ok(Answer { status: 200, body: got, .. }) if got == body))
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {} answers were not 200 {body:?}; the first: {:?}",
            failures.len(),
            answers.len(),
            &failures[..failures.len().min(5)]
        );
        assert_eq!(answers.len(), requests, "requests answered");
    }

    /// Every answer's latency, sorted.
    pub fn latencies(&self) -> Vec<Duration> {
        let mut latencies: Vec<_> = self
            .0
            .iter()
            .flat_map(|held| &held.answers)
            .filter_map(|answer| answer.as_ref().ok().map(|answer| answer.latency))
            .collect();
        latencies.sort();
        latencies
    }

    /// The byte stream each connection sent, sorted.
    pub fn sent_streams(&self) -> Vec<Vec<u8>> {
        let mut streams: Vec<_> = self.0.iter().map(|held| held.sent.clone()).collect();
        streams.sort();
        streams
    }
}

/// The nearest-rank `quantile` (0 to 1) of sorted `values`.
pub fn quantile(sorted: &[Duration], quantile: f64) -> Duration {
    assert!(!sorted.is_empty(), "no values to take a quantile of");
    let rank = ((quantile * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The standard topology with recording backends for both colors and the
/// standard service "web" up (blue live). Torn down on drop, in field
/// order.
pub struct ShadowBed {
    pub bluegreen: Bluegreen,
    pub blue: RecordingBackend,
    green: Option<RecordingBackend>,
    pub topology: Topology,
}

impl ShadowBed {
    pub fn new(blue: Reply, green: Reply) -> ShadowBed {
        let topology = Topology::new();
        let bed = ShadowBed {
            bluegreen: Bluegreen::new(&topology.switch),
            blue: RecordingBackend::start(&topology.blue, BACKEND_PORT, blue),
            green: Some(RecordingBackend::start(
                &topology.green,
                BACKEND_PORT,
                green,
            )),
            topology,
        };
        bed.bluegreen.ok(&strs(&up_args()));
        bed
    }

    /// Green's backend; panics once stopped.
    pub fn green(&self) -> &RecordingBackend {
        self.green.as_ref().expect("green's backend is running")
    }

    /// Stops green's backend: its address refuses connections.
    pub fn stop_green(&mut self) {
        self.green = None;
    }

    /// Starts green's backend anew (after [`ShadowBed::stop_green`]),
    /// answering `reply`.
    pub fn start_green(&mut self, reply: Reply) {
        self.green = Some(RecordingBackend::start(
            &self.topology.green,
            BACKEND_PORT,
            reply,
        ));
    }

    /// `plans` from the client namespace (see [`Conversations::run`]).
    pub fn converse(&self, workers: usize, plans: Vec<Vec<Ask>>, limit: Duration) -> Conversations {
        Conversations::run(&self.topology.client, workers, plans, limit)
    }

    /// `shadow run web` with `args`, once its capture is on.
    pub fn shadow_run(&self, args: &[&str]) -> ShadowRun {
        let mut full = vec!["shadow", "run", "web", "--json"];
        full.extend_from_slice(args);
        let run = ShadowRun {
            child: Some(self.bluegreen.spawn(&full)),
            started: Instant::now(),
        };
        run.wait_until_capturing(self);
        run
    }

    /// `shadow run web` with `args`, which must be refused: exit non-zero
    /// within 10 s (a run that started instead is interrupted, and the
    /// test fails).
    pub fn shadow_run_refused(&self, args: &[&str]) -> CliRun {
        let mut full = vec!["shadow", "run", "web"];
        full.extend_from_slice(args);
        let mut child = self.bluegreen.spawn(&full);
        let Some(status) = wait_at_most(&mut child, Duration::from_secs(10)) else {
            drop(ShadowRun {
                child: Some(child),
                started: Instant::now(),
            });
            panic!("shadow run {args:?} was not refused: it ran");
        };
        let output = child
            .wait_with_output()
            .expect("read a refused run's output");
        let run = CliRun {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        assert_ne!(run.code, 0, "shadow run {args:?} succeeded: {run:?}");
        run
    }

    /// `shadow status web --json`'s record of web; panics without one.
    pub fn shadow_status(&self) -> serde_json::Value {
        let status: serde_json::Value =
            serde_json::from_str(&self.bluegreen.ok(&["shadow", "status", "web", "--json"]))
                .expect("shadow status --json is JSON");
        assert_eq!(status["schema_version"], 1, "{status}");
        let shadows = status["shadows"].as_array().expect("shadows array");
        assert_eq!(shadows.len(), 1, "one record for web: {status}");
        shadows[0].clone()
    }
}

/// A running `bluegreen shadow run` (`nsenter` execs it: its pid is the
/// run's), interrupted and reaped on drop.
pub struct ShadowRun {
    child: Option<Child>,
    started: Instant,
}

/// How long a run may take to end once asked: it looks about once a
/// second, then lets the replays in progress finish (at most 10 s).
const END_WAIT: Duration = Duration::from_secs(15);

impl ShadowRun {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("run not reaped").id()
    }

    /// Waits (at most 20 s) until the run's record says its capture is on:
    /// its first report, published once the capture counters are read,
    /// names them.
    fn wait_until_capturing(&self, bed: &ShadowBed) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = bed.bluegreen.run(&["shadow", "status", "web", "--json"]);
            if status.code == 0 {
                let status: serde_json::Value =
                    serde_json::from_str(&status.stdout).expect("shadow status --json is JSON");
                let record = &status["shadows"][0];
                if record["owner"]["pid"] == self.pid()
                    && record["stopped"].is_null()
                    && record["report"]["capture"]
                        .as_object()
                        .is_some_and(|capture| !capture.is_empty())
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "shadow run did not start capturing within 20 s; last status: {status:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGINT, as Ctrl-C; returns the final record it printed.
    pub fn interrupt(mut self) -> serde_json::Value {
        // SAFETY: signalling a child we spawned and have not reaped.
        unsafe { libc::kill(self.pid() as i32, libc::SIGINT) };
        self.finish(END_WAIT).0
    }

    /// Waits (at most `limit`) for the run to end by itself; returns its
    /// final record and how long it ran from its start.
    pub fn wait(mut self, limit: Duration) -> (serde_json::Value, Duration) {
        self.finish(limit)
    }

    /// Reaps the run, which must exit 0 within `limit`; its record and
    /// how long it ran.
    fn finish(&mut self, limit: Duration) -> (serde_json::Value, Duration) {
        let mut child = self.child.take().expect("run not reaped");
        let status = wait_at_most(&mut child, limit);
        let ran = self.started.elapsed();
        let (mut stdout, mut stderr) = (String::new(), String::new());
        if let Some(mut out) = child.stdout.take() {
            out.read_to_string(&mut stdout).expect("read run's stdout");
        }
        if let Some(mut err) = child.stderr.take() {
            err.read_to_string(&mut stderr).expect("read run's stderr");
        }
        let status = status.unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shadow run did not end within {limit:?}; stderr: {stderr}")
        });
        assert!(
            status.success(),
            "shadow run failed ({status}):\nstdout: {stdout}\nstderr: {stderr}"
        );
        let record = serde_json::from_str(&stdout)
            .unwrap_or_else(|error| panic!("shadow run's stdout is not JSON ({error}): {stdout}"));
        (record, ran)
    }
}

/// A `shadow run` of the standard service at 100 % for `duration`, while
/// `requests` GETs go through the VIP (each answered by the live blue),
/// left to end by itself: it must, within 20 s, and succeed.
pub fn shadow_briefly(fixture: &Fixture, duration: &str, requests: usize) {
    let mut run = fixture.bluegreen.spawn(&[
        "shadow",
        "run",
        "web",
        "--sample",
        "100%",
        "--duration",
        duration,
    ]);
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..requests {
        assert_eq!(
            fixture.get(),
            "blue",
            "clients only ever see the live color"
        );
    }
    assert_ends_well(&mut run, Duration::from_secs(20));
}

/// Waits for a `shadow run` that ends by itself; it must within `limit`,
/// and succeed.
pub fn assert_ends_well(run: &mut Child, limit: Duration) {
    let Some(status) = wait_at_most(run, limit) else {
        let _ = run.kill();
        let _ = run.wait();
        panic!("shadow run still running after {limit:?}");
    };
    assert!(status.success(), "shadow run exited with {status}");
}

/// The child's exit status if it exits within `limit`.
fn wait_at_most(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("poll the run") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for ShadowRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling a child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            if wait_at_most(&mut child, END_WAIT).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

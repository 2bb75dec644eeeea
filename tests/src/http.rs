//! Minimal HTTP/1.1 and UDP backends that answer with their color, and the
//! clients and bounded load loops that talk to them through the VIP.

use std::{
    collections::BTreeMap,
    io::{self, BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::netns::Namespace;

const POLL: Duration = Duration::from_millis(20);

/// A backend running in its namespace until dropped.
pub struct Backend {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Requests (HTTP) or datagrams (UDP) answered, `/metrics` aside.
    pub served: Arc<AtomicU64>,
    /// What `GET /metrics` answers (empty until a test sets it).
    metrics: Arc<Mutex<String>>,
    /// Every HTTP request answered, `/metrics` aside, counted by what it
    /// asked.
    requests: Arc<Mutex<BTreeMap<Request, u64>>>,
}

/// An HTTP request as a backend saw it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: String,
}

impl Backend {
    /// Serves HTTP on `[::]:port` (both families) and UDP on the same port,
    /// answering every request with `body`.
    pub fn start(namespace: &Namespace, port: u16, body: &str) -> Backend {
        Backend::start_with(&|work| namespace.spawn(work), port, body)
    }

    /// [`Backend::start`] in this process's own network namespace (the
    /// `backend` binary, which a test's lifecycle command starts).
    pub fn start_here(port: u16, body: &str) -> Backend {
        Backend::start_with(&|work| std::thread::spawn(work), port, body)
    }

    fn start_with(
        spawn: &dyn Fn(Box<dyn FnOnce() + Send>) -> JoinHandle<()>,
        port: u16,
        body: &str,
    ) -> Backend {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let metrics = Arc::new(Mutex::new(String::new()));
        let requests = Arc::new(Mutex::new(BTreeMap::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let http = {
            let answers = Answers {
                body: body.to_owned(),
                metrics: metrics.clone(),
                requests: requests.clone(),
            };
            let (stop, served, ready) = (stop.clone(), served.clone(), ready_tx.clone());
            spawn(Box::new(move || {
                let listener = TcpListener::bind(("::", port)).expect("bind HTTP backend");
                listener
                    .set_nonblocking(true)
                    .expect("non-blocking listener");
                ready.send(()).expect("signal ready");
                let serve = {
                    let stop = stop.clone();
                    move |stream| {
                        let _ = serve_connection(stream, &stop, &served, &answers);
                    }
                };
                accept_loop(listener, &stop, serve);
            }))
        };
        let udp = {
            let (stop, served, body) = (stop.clone(), served.clone(), body.to_owned());
            spawn(Box::new(move || {
                let socket = UdpSocket::bind(("::", port)).expect("bind UDP backend");
                socket.set_read_timeout(Some(POLL)).expect("UDP timeout");
                ready_tx.send(()).expect("signal ready");
                let mut buffer = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = socket.recv_from(&mut buffer) {
                        served.fetch_add(1, Ordering::Relaxed);
                        let _ = socket.send_to(body.as_bytes(), peer);
                    }
                }
            }))
        };
        for _ in 0..2 {
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("backend did not start within 5 s");
        }
        Backend {
            stop,
            threads: vec![http, udp],
            served,
            metrics,
            requests,
        }
    }

    /// The HTTP requests answered so far (`/metrics` aside), by method,
    /// path and body.
    pub fn requests(&self) -> BTreeMap<Request, u64> {
        self.requests.lock().expect("requests lock").clone()
    }

    /// Replaces what `GET /metrics` answers from now on (a backend that
    /// exports its load).
    pub fn set_metrics(&self, text: &str) {
        self.metrics_writer().set(text);
    }

    /// A handle that sets what `GET /metrics` answers, for a thread that
    /// keeps the figures moving.
    pub fn metrics_writer(&self) -> MetricsWriter {
        MetricsWriter(self.metrics.clone())
    }
}

/// See [`Backend::metrics_writer`]; a server of its own may also read
/// what the writer last set (the bench serves many ports from one).
#[derive(Clone, Default)]
pub struct MetricsWriter(Arc<Mutex<String>>);

impl MetricsWriter {
    pub fn set(&self, text: &str) {
        *self.0.lock().expect("metrics lock") = text.to_owned();
    }

    pub fn text(&self) -> String {
        self.0.lock().expect("metrics lock").clone()
    }
}

/// What an HTTP backend answers: its color, or at `/metrics` its metrics.
#[derive(Clone)]
struct Answers {
    body: String,
    metrics: Arc<Mutex<String>>,
    requests: Arc<Mutex<BTreeMap<Request, u64>>>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Accepts connections on `listener` until `stop`, each served by
/// `serve` on a thread of its own (in the listener's namespace: a thread
/// spawned here inherits it); joins them before returning.
pub(crate) fn accept_loop(
    listener: TcpListener,
    stop: &AtomicBool,
    serve: impl Fn(TcpStream) + Clone + Send + 'static,
) {
    let mut connections = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // Woken by a connection at once: a sleep between empty accepts
        // would delay each new connection's answer by up to the sleep,
        // which a client making one request after another (a warm-up
        // gate) pays every time.
        if readable(&listener, POLL) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let serve = serve.clone();
                    connections.push(std::thread::spawn(move || serve(stream)));
                }
                // Taken back by the client before we accepted it.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => std::thread::sleep(POLL),
            }
        }
        connections.retain(|connection| !connection.is_finished());
    }
    for connection in connections {
        let _ = connection.join();
    }
}

/// Whether `listener` has a connection to accept within `timeout`.
fn readable(listener: &TcpListener, timeout: Duration) -> bool {
    let mut polled = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one pollfd, valid for the call, for a descriptor the
    // listener owns.
    unsafe { libc::poll(&mut polled, 1, millis) > 0 }
}

fn serve_connection(
    stream: TcpStream,
    stop: &AtomicBool,
    served: &AtomicU64,
    answers: &Answers,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut in_headers = false;
    let mut close_requested = false;
    let mut wants_metrics = false;
    let mut request = Request {
        method: String::new(),
        path: String::new(),
        body: String::new(),
    };
    let mut length = 0;
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(error) if woke_to_poll(&error) => {
                continue;
            }
            Err(error) => return Err(error),
        }
        if !in_headers {
            let mut words = line.split(' ');
            let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            in_headers = !method.is_empty() && line.ends_with(" HTTP/1.1\r\n");
            wants_metrics = method == "GET" && path == "/metrics";
            request.method = method.to_owned();
            request.path = path.to_owned();
            close_requested = false;
            length = 0;
        } else if line == "\r\n" {
            in_headers = false;
            request.body = read_body(&mut reader, length, stop)?;
            let body = if wants_metrics {
                answers.metrics.lock().expect("metrics lock").clone()
            } else {
                served.fetch_add(1, Ordering::Relaxed);
                *answers
                    .requests
                    .lock()
                    .expect("requests lock")
                    .entry(request.clone())
                    .or_default() += 1;
                answers.body.clone()
            };
            let connection = if close_requested {
                "close"
            } else {
                "keep-alive"
            };
            // One write: several small ones would wait on Nagle and the
            // client's delayed ACK.
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: {connection}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            writer.write_all(response.as_bytes())?;
            // Load generators that ask for a new connection per request
            // (wrk with `Connection: close`) wait for the server to close.
            if close_requested {
                return Ok(());
            }
        } else if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        } else if line.eq_ignore_ascii_case("connection: close\r\n") {
            close_requested = true;
        }
    }
    Ok(())
}

/// A request's body of `length` bytes, which may arrive after its headers
/// (the reads time out every [`POLL`] to notice `stop`).
fn read_body(
    reader: &mut BufReader<TcpStream>,
    length: usize,
    stop: &AtomicBool,
) -> io::Result<String> {
    let mut body = vec![0; length];
    let mut filled = 0;
    while filled < length && !stop.load(Ordering::Relaxed) {
        match reader.read(&mut body[filled..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(read) => filled += read,
            Err(error) if woke_to_poll(&error) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(String::from_utf8_lossy(&body[..filled]).into_owned())
}

/// A `200 OK` response's body.
fn read_response(reader: &mut BufReader<TcpStream>) -> io::Result<String> {
    match read_answer(reader)? {
        (200, body) => Ok(body),
        (status, _) => Err(io::Error::other(format!("status {status}, not 200"))),
    }
}

/// A response with a Content-Length body: its status and body.
fn read_answer(reader: &mut BufReader<TcpStream>) -> io::Result<(u16, String)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "headers cut short",
            ));
        }
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let length = length.ok_or_else(|| io::Error::other("no Content-Length"))?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8(body).map_err(io::Error::other)?;
    Ok((status, body))
}

/// One request on a fresh connection; returns the body (the color).
pub fn get(target: SocketAddr, timeout: Duration) -> io::Result<String> {
    KeepAlive::connect(target, timeout)?.get()
}

/// Like [`get`], from a chosen local address (a second client on one host).
pub fn get_from(source: IpAddr, target: SocketAddr, timeout: Duration) -> io::Result<String> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&target.into(), timeout)?;
    KeepAlive::from_stream(socket.into(), timeout)?.get()
}

/// A connection that carries several requests.
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    pub fn connect(target: SocketAddr, timeout: Duration) -> io::Result<KeepAlive> {
        KeepAlive::from_stream(TcpStream::connect_timeout(&target, timeout)?, timeout)
    }

    fn from_stream(stream: TcpStream, timeout: Duration) -> io::Result<KeepAlive> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(KeepAlive {
            reader: BufReader::new(stream),
        })
    }

    pub fn get(&mut self) -> io::Result<String> {
        self.get_path("/")
    }

    /// The peer as the application sees it (`getpeername`).
    pub fn peer(&self) -> io::Result<SocketAddr> {
        self.reader.get_ref().peer_addr()
    }

    pub fn get_path(&mut self, path: &str) -> io::Result<String> {
        write!(
            self.reader.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: bluegreen\r\n\r\n"
        )?;
        read_response(&mut self.reader)
    }

    /// Writes `request` (one whole request, as is) and reads its answer:
    /// status and body, whatever the status.
    pub fn exchange(&mut self, request: &[u8]) -> io::Result<(u16, String)> {
        self.reader.get_mut().write_all(request)?;
        read_answer(&mut self.reader)
    }
}

/// A fresh UDP socket of `target`'s family on any port, its reads bounded
/// by `timeout`.
fn udp_socket(target: SocketAddr, timeout: Duration) -> io::Result<UdpSocket> {
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(bind)?;
    socket.set_read_timeout(Some(timeout))?;
    Ok(socket)
}

/// One UDP request/response exchange from a fresh socket.
pub fn udp_request(target: SocketAddr, timeout: Duration) -> io::Result<String> {
    let socket = udp_socket(target, timeout)?;
    socket.connect(target)?;
    socket.send(b"color?")?;
    let mut buffer = [0u8; 64];
    let length = socket.recv(&mut buffer)?;
    String::from_utf8(buffer[..length].to_vec()).map_err(io::Error::other)
}

/// One exchange on an unconnected UDP socket (`sendto`, `recvfrom`):
/// the body and the address the reply came from.
pub fn udp_unconnected(target: SocketAddr, timeout: Duration) -> io::Result<(String, SocketAddr)> {
    let socket = udp_socket(target, timeout)?;
    socket.send_to(b"color?", target)?;
    let mut buffer = [0u8; 64];
    let (length, from) = socket.recv_from(&mut buffer)?;
    let body = String::from_utf8(buffer[..length].to_vec()).map_err(io::Error::other)?;
    Ok((body, from))
}

/// What a bounded load run saw.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub served_by: BTreeMap<String, u64>,
    pub failures: Vec<String>,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn succeeded(&self) -> u64 {
        self.served_by.values().sum()
    }

    /// Panics unless all `requests` were answered and none failed.
    pub fn assert_all_served(&self, requests: u64) {
        assert!(
            self.failures.is_empty(),
            "{} failed: {:?}",
            self.failures.len(),
            self.failures
        );
        assert_eq!(self.succeeded(), requests, "{self:?}");
    }
}

/// Load that runs in the background: `workers` threads in `namespace`, each
/// making requests on new connections until `requests` are done in total,
/// `deadline` passes, or `stop` is called.
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    report: Arc<Mutex<LoadReport>>,
    started: Instant,
}

impl Load {
    pub fn start(
        namespace: &Namespace,
        target: SocketAddr,
        workers: usize,
        requests: u64,
        deadline: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(AtomicU64::new(0));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let started = Instant::now();
        let workers = (0..workers)
            .map(|_| {
                let (stop, issued, report) = (stop.clone(), issued.clone(), report.clone());
                namespace.spawn(move || {
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < deadline
                        && issued.fetch_add(1, Ordering::Relaxed) < requests
                    {
                        let outcome = get(target, Duration::from_secs(2));
                        let mut report = report.lock().expect("report lock");
                        match outcome {
                            Ok(body) => *report.served_by.entry(body).or_default() += 1,
                            Err(error) => report.failures.push(error.to_string()),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            workers,
            report,
            started,
        }
    }

    /// Requests answered so far.
    pub fn progress(&self) -> u64 {
        let report = self.report.lock().expect("report lock");
        report.succeeded() + report.failures.len() as u64
    }

    pub fn is_finished(&self) -> bool {
        self.workers.iter().all(|worker| worker.is_finished())
    }

    /// Waits for the workers (stopping them first if `stop` is true).
    pub fn finish(self, stop: bool) -> LoadReport {
        if stop {
            self.stop.store(true, Ordering::Relaxed);
        }
        for worker in self.workers {
            worker.join().expect("load worker panicked");
        }
        let mut report = self.report.lock().expect("report lock").clone();
        report.elapsed = self.started.elapsed();
        report
    }
}

/// A read that timed out so that its loop can look at its stop flag: not
/// an error.
pub(crate) fn woke_to_poll(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

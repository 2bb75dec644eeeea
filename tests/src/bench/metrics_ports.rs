//! Many backends' `/metrics` from one thread: one non-blocking listener
//! per port, every listener and connection waited on with one poll(2).
//! The tests' [`crate::http::Backend`] takes two threads per backend (and
//! one more per connection); hundreds of them would crowd the CPUs whose
//! time the analysis bench measures.

use std::{
    io::{self, Read, Write},
    net::{TcpListener, TcpStream},
    ops::Range,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{http::MetricsWriter, netns::Namespace};

/// How long a poll waits before it looks at the stop flag again.
const STOP_POLL_MS: libc::c_int = 100;

/// Answers every request on `ports`, whatever its path, with what
/// `metrics` last set; stops when dropped.
pub struct MetricsPorts {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsPorts {
    pub fn start(namespace: &Namespace, ports: Range<u16>, metrics: MetricsWriter) -> MetricsPorts {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, listening) = mpsc::channel();
        let thread = {
            let stop = stop.clone();
            namespace.spawn(move || {
                let listeners: Vec<TcpListener> = ports
                    .map(|port| {
                        let listener = TcpListener::bind(("0.0.0.0", port))
                            .unwrap_or_else(|error| panic!("cannot bind port {port}: {error}"));
                        listener
                            .set_nonblocking(true)
                            .expect("non-blocking listener");
                        listener
                    })
                    .collect();
                let _ = ready.send(());
                serve(&listeners, &stop, &metrics);
            })
        };
        // A bind that failed drops the sender: the wait ends at once.
        listening
            .recv_timeout(Duration::from_secs(5))
            .expect("the metrics ports did not open");
        MetricsPorts {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for MetricsPorts {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A connection whose request has not fully arrived.
struct Open {
    stream: TcpStream,
    request: Vec<u8>,
}

fn serve(listeners: &[TcpListener], stop: &AtomicBool, metrics: &MetricsWriter) {
    let mut open: Vec<Open> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut polled: Vec<libc::pollfd> = listeners
            .iter()
            .map(AsRawFd::as_raw_fd)
            .chain(open.iter().map(|open| open.stream.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: poll(2) on descriptors this thread owns, over exactly
        // the vector's length.
        let ready = unsafe {
            libc::poll(
                polled.as_mut_ptr(),
                polled.len() as libc::nfds_t,
                STOP_POLL_MS,
            )
        };
        if ready <= 0 {
            continue;
        }
        let (listening, reading) = polled.split_at(listeners.len());
        let mut waiting = Vec::with_capacity(open.len());
        for (connection, polled) in open.drain(..).zip(reading) {
            if polled.revents == 0 {
                waiting.push(connection);
            } else if let Some(connection) = answer(connection, metrics) {
                waiting.push(connection);
            }
        }
        for (listener, polled) in listeners.iter().zip(listening) {
            if polled.revents == 0 {
                continue;
            }
            while let Ok((stream, _)) = listener.accept() {
                if stream.set_nonblocking(true).is_ok() {
                    waiting.push(Open {
                        stream,
                        request: Vec::new(),
                    });
                }
            }
        }
        open = waiting;
    }
}

/// Reads what has arrived; once the request's head is complete, answers
/// and closes. The connection back if its request is not complete yet.
fn answer(mut connection: Open, metrics: &MetricsWriter) -> Option<Open> {
    let mut chunk = [0u8; 2048];
    loop {
        match connection.stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(read) => connection.request.extend_from_slice(&chunk[..read]),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => return None,
        }
    }
    if !connection
        .request
        .windows(4)
        .any(|window| window == b"\r\n\r\n")
    {
        return Some(connection);
    }
    let body = metrics.text();
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // A fresh socket's send buffer holds the whole answer; blocking with a
    // deadline only guards against a client that stopped reading.
    let _ = connection
        .stream
        .set_nonblocking(false)
        .and_then(|()| {
            connection
                .stream
                .set_write_timeout(Some(Duration::from_secs(1)))
        })
        .and_then(|()| connection.stream.write_all(response.as_bytes()));
    None
}

//! An HTTP backend fit for a load generator.
//!
//! The tests' [`crate::http::Backend`] is built for correctness, not speed:
//! it starts a thread for every connection, and reads and records every
//! request line by line. Through it, wrk would measure that work more than
//! the dataplane. This one blocks in `accept()` in a pool of threads and
//! answers with one write.

use std::{
    io::{self, Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use super::cpu;
use crate::{http::woke_to_poll, netns::Namespace};

/// Each worker serves one connection at a time, so there must be more
/// workers than the load keeps connections open (wrk: 32).
const WORKERS: usize = 64;

/// How often a worker waiting for a request looks at the stop flag. Data
/// that arrives wakes it at once; this only bounds shutdown.
const STOP_POLL: Duration = Duration::from_millis(100);

pub struct FastBackend {
    listener: Arc<TcpListener>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    /// The workers' thread ids, as each registers itself: what the
    /// backend costs is their CPU time.
    worker_tids: Arc<Mutex<Vec<libc::pid_t>>>,
}

impl FastBackend {
    /// Serves HTTP on `[::]:port` in `namespace`, answering `body` to every
    /// request, and closing after the answer if the request asked to.
    pub fn start(namespace: &Namespace, port: u16, body: &str) -> FastBackend {
        // The socket belongs to the namespace it was created in, whichever
        // thread later accepts on it.
        let listener = namespace
            .spawn(move || TcpListener::bind(("::", port)))
            .join()
            .expect("listener thread")
            .unwrap_or_else(|error| panic!("cannot bind the bench backend: {error}"));
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let responses = Arc::new(Responses::new(body));
        let worker_tids = Arc::new(Mutex::new(Vec::with_capacity(WORKERS)));
        let workers = (0..WORKERS)
            .map(|_| {
                let (listener, stop, responses, tids) = (
                    listener.clone(),
                    stop.clone(),
                    responses.clone(),
                    worker_tids.clone(),
                );
                std::thread::spawn(move || {
                    tids.lock().expect("tids lock").push(cpu::this_thread());
                    accept_loop(&listener, &stop, &responses)
                })
            })
            .collect();
        FastBackend {
            listener,
            stop,
            workers,
            worker_tids,
        }
    }

    /// The CPU seconds its workers have used so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu::threads_seconds(&self.worker_tids.lock().expect("tids lock"))
    }
}

impl Drop for FastBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Shutting a listening socket down wakes every thread blocked in
        // accept() on it (with EINVAL).
        // SAFETY: shutdown(2) on a descriptor the listener owns.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

struct Responses {
    keep_alive: Vec<u8>,
    close: Vec<u8>,
}

impl Responses {
    fn new(body: &str) -> Responses {
        let response = |connection: &str| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: {connection}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        };
        Responses {
            keep_alive: response("keep-alive"),
            close: response("close"),
        }
    }
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, responses: &Responses) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = serve(stream, stop, responses);
            }
            // After a shutdown, or a connection reset before we took it.
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

fn serve(mut stream: TcpStream, stop: &AtomicBool, responses: &Responses) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(STOP_POLL))?;
    let mut pending = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = find(&pending, b"\r\n\r\n") {
            let close = asks_to_close(&pending[..end]);
            stream.write_all(if close {
                &responses.close
            } else {
                &responses.keep_alive
            })?;
            if close {
                return Ok(());
            }
            pending.drain(..end + 4);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(read) => pending.extend_from_slice(&chunk[..read]),
            Err(error) if woke_to_poll(&error) => {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
            Err(error) => return Err(error),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn asks_to_close(head: &[u8]) -> bool {
    head.split(|&byte| byte == b'\n')
        .any(|line| line.trim_ascii().eq_ignore_ascii_case(b"connection: close"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_connection_close() {
        assert!(asks_to_close(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close"
        ));
        assert!(asks_to_close(b"GET / HTTP/1.1\r\nconnection: Close\r\n"));
        assert!(!asks_to_close(b"GET / HTTP/1.1\r\nHost: x"));
        assert_eq!(find(b"ab\r\n\r\ncd", b"\r\n\r\n"), Some(2));
    }
}

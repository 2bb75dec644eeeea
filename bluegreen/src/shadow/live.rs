//! The live color's exchanges on one flow, from what the kernel reports:
//! when each request's last byte came in (XDP), and each reply segment's
//! sequence number, length, first bytes and time (TC egress). Bodies never
//! reach userspace, so sizes come from sequence numbers and the status from
//! the first reply segment's first bytes.
//!
//! An exchange runs from a request to the next one: this assumes a client
//! that waits for each answer before its next request. A client that
//! pipelines gets its exchanges merged: a request sent before the previous
//! answer ends that exchange early (as failed if none of the answer came
//! yet), and the answers that follow are all counted in the later one.
//! Likewise an interim answer (100 Continue) sent before the request's last
//! byte is counted in the exchange before.

use super::{figures::Outcome, http::parse_status_line};

/// The exchanges of one flow, one at a time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveExchanges {
    current: Option<Exchange>,
    /// Where the last finished reply ended: a late retransmission of its
    /// bytes is not the next answer's first byte.
    answered_to: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Exchange {
    request_ns: u64,
    reply: Option<Reply>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Reply {
    status: Option<u16>,
    first_ns: u64,
    last_ns: u64,
    /// The sequence range the reply covers, `start` included, `end`
    /// excluded: bytes are counted from it, not summed over segments, so a
    /// retransmission counts once.
    start: u32,
    end: u32,
}

impl LiveExchanges {
    /// A request's last byte arrived from the client: the exchange before
    /// it, if any, is over.
    pub fn request_sent(&mut self, at_ns: u64) -> Option<Outcome> {
        let previous = self.closed(at_ns);
        self.current = Some(Exchange {
            request_ns: at_ns,
            reply: None,
        });
        previous
    }

    /// A segment of the live backend's reply. Segments before any request
    /// (a server greeting) and empty ones (acknowledgements, FIN) are not
    /// part of an answer.
    pub fn reply_segment(&mut self, seq: u32, payload_len: u32, prefix: &[u8], at_ns: u64) {
        let Some(exchange) = &mut self.current else {
            return;
        };
        if payload_len == 0 {
            return;
        }
        let (mut seq, mut prefix) = (seq, prefix);
        let end = seq.wrapping_add(payload_len);
        if let Some(answered_to) = self.answered_to {
            if before_or_at(end, answered_to) {
                return;
            }
            if before(seq, answered_to) {
                // Its first bytes are the last answer's, not a status line.
                (seq, prefix) = (answered_to, &[]);
            }
        }
        let Some(reply) = &mut exchange.reply else {
            exchange.reply = Some(Reply {
                status: parse_status_line(prefix),
                first_ns: at_ns,
                last_ns: at_ns,
                start: seq,
                end,
            });
            return;
        };
        reply.first_ns = reply.first_ns.min(at_ns);
        reply.last_ns = reply.last_ns.max(at_ns);
        if before(seq, reply.start) {
            // A segment reordered ahead of the first one seen: it is the
            // one the status line starts.
            reply.start = seq;
            reply.status = parse_status_line(prefix);
        }
        if before(reply.end, end) {
            reply.end = end;
        }
    }

    /// The flow ended: the exchange in progress, if any, is over. `at_ns`
    /// is when, for a request that got no answer.
    pub fn closed(&mut self, at_ns: u64) -> Option<Outcome> {
        let exchange = self.current.take()?;
        Some(match exchange.reply {
            Some(reply) => {
                self.answered_to = Some(reply.end);
                Outcome {
                    status: reply.status,
                    ttfb_ns: Some(reply.first_ns.saturating_sub(exchange.request_ns)),
                    total_ns: Some(reply.last_ns.saturating_sub(exchange.request_ns)),
                    bytes: u64::from(reply.end.wrapping_sub(reply.start)),
                    failed: false,
                }
            }
            // How long the request waited in vain.
            None => Outcome {
                status: None,
                ttfb_ns: None,
                total_ns: Some(at_ns.saturating_sub(exchange.request_ns)),
                bytes: 0,
                failed: true,
            },
        })
    }
}

/// Whether sequence number `a` comes before `b`. They wrap: the signed
/// distance decides, as in TCP.
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

fn before_or_at(a: u32, b: u32) -> bool {
    a == b || before(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r";

    #[test]
    fn an_exchange_runs_from_its_request_to_the_next() {
        let mut flow = LiveExchanges::default();
        flow.reply_segment(900, 20, b"SSH-2.0-OpenSSH_", 500);
        assert_eq!(
            flow.request_sent(1_000),
            None,
            "nothing before the first request"
        );
        flow.reply_segment(1_000, 1448, OK, 4_000);
        flow.reply_segment(2_448, 1448, b"data: {\"token\":", 5_000);
        flow.reply_segment(3_896, 0, b"", 5_500);
        flow.reply_segment(3_896, 104, b"data: [DONE]\n\n\r\n", 9_000);
        assert_eq!(
            flow.request_sent(20_000),
            Some(Outcome {
                status: Some(200),
                ttfb_ns: Some(3_000),
                total_ns: Some(8_000),
                bytes: 3_000,
                failed: false,
            })
        );
        flow.reply_segment(4_000, 100, b"HTTP/1.1 503 Ser", 21_000);
        assert_eq!(
            flow.closed(30_000),
            Some(Outcome {
                status: Some(503),
                ttfb_ns: Some(1_000),
                total_ns: Some(1_000),
                bytes: 100,
                failed: false,
            })
        );
        assert_eq!(flow.closed(31_000), None, "already closed");
    }

    #[test]
    fn retransmissions_count_once_and_reordering_is_undone() {
        let mut flow = LiveExchanges::default();
        flow.request_sent(0);
        // The second segment first, then the first, then both again.
        flow.reply_segment(1_100, 100, b"more body bytes.", 10);
        flow.reply_segment(1_000, 100, OK, 12);
        flow.reply_segment(1_000, 100, OK, 50);
        flow.reply_segment(1_050, 150, b"overlapping retx", 60);
        assert_eq!(
            flow.closed(100),
            Some(Outcome {
                status: Some(200),
                ttfb_ns: Some(10),
                total_ns: Some(60),
                bytes: 200,
                failed: false,
            })
        );
    }

    #[test]
    fn bytes_are_counted_across_sequence_wraparound() {
        let mut flow = LiveExchanges::default();
        flow.request_sent(0);
        flow.reply_segment(u32::MAX - 99, 100, OK, 1);
        flow.reply_segment(0, 100, b"body", 2);
        flow.reply_segment(u32::MAX - 99, 100, OK, 3);
        let outcome = flow.closed(4).expect("an exchange");
        assert_eq!((outcome.status, outcome.bytes), (Some(200), 200));
    }

    #[test]
    fn a_late_retransmission_of_the_last_answer_is_not_the_next_one() {
        let mut flow = LiveExchanges::default();
        flow.request_sent(0);
        flow.reply_segment(1_000, 100, OK, 10);
        flow.request_sent(100).expect("the first exchange");
        flow.reply_segment(1_000, 100, OK, 110);
        flow.reply_segment(1_050, 100, b"the old tail and", 120);
        flow.reply_segment(1_150, 50, b"body", 130);
        assert_eq!(
            flow.closed(200),
            Some(Outcome {
                status: None,
                ttfb_ns: Some(20),
                total_ns: Some(30),
                bytes: 100,
                failed: false,
            }),
            "the overlap's new bytes start the answer, with no status line at its start"
        );
    }

    #[test]
    fn a_request_without_an_answer_fails() {
        let mut flow = LiveExchanges::default();
        flow.request_sent(1_000);
        let failed = Outcome {
            status: None,
            ttfb_ns: None,
            total_ns: Some(4_000),
            bytes: 0,
            failed: true,
        };
        assert_eq!(flow.request_sent(5_000), Some(failed));
        flow.reply_segment(7_000, 0, b"", 6_000);
        assert_eq!(
            flow.closed(9_000),
            Some(failed),
            "an empty segment is no answer"
        );
    }

    #[test]
    fn an_answer_without_a_status_line_has_no_status() {
        let mut flow = LiveExchanges::default();
        flow.request_sent(0);
        flow.reply_segment(1, 10, b"\x16\x03\x03\x00\x7a", 5);
        let outcome = flow.closed(10).expect("an exchange");
        assert_eq!(
            (outcome.status, outcome.failed, outcome.bytes),
            (None, false, 10)
        );
    }
}

//! The records the dataplane writes into the shadow ring, as userspace
//! reads them: checked before use, since a record is only as good as the
//! program that wrote it (an older or newer object on a hot upgrade).

use std::io;

use aya::maps::{MapData, RingBuf};
use bluegreen_common::{
    MAX_SHADOW_PAYLOAD, SHADOW_FROM_CLIENT, SHADOW_FROM_LIVE, SHADOW_HEADER_LEN,
    SHADOW_REPLY_PREFIX, ShadowHeader,
};
use tokio::io::{Interest, unix::AsyncFd};

use super::reassembly::Segment;

/// Where a record comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A client's segment to the VIP.
    Client,
    /// The live backend's reply.
    Live,
}

/// One ring record.
#[derive(Debug)]
pub struct Record<'a> {
    pub header: ShadowHeader,
    pub origin: Origin,
    pub payload: &'a [u8],
}

impl Record<'_> {
    pub fn seq(&self) -> u32 {
        u32::from_be_bytes(self.header.seq)
    }

    /// A client's TCP segment, as the reassembler takes it.
    pub fn segment(&self) -> Segment<'_> {
        Segment {
            key: self.header.key,
            seq: self.seq(),
            flags: self.header.tcp_flags,
            payload: self.payload,
            wire_len: self.header.wire_len,
            at_ns: self.header.at_ns,
        }
    }
}

/// Why a record was not used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record of {0} bytes, shorter than its header")]
    Short(usize),
    #[error("record kind {0} is not one this bluegreen writes")]
    Kind(u8),
    #[error("record says it carries {said} payload bytes but carries {carried}")]
    Length { said: usize, carried: usize },
}

pub fn parse(bytes: &[u8]) -> Result<Record<'_>, RecordError> {
    if bytes.len() < SHADOW_HEADER_LEN {
        return Err(RecordError::Short(bytes.len()));
    }
    // SAFETY: the length was checked; `ShadowHeader` is plain data, valid
    // for any bytes, read unaligned.
    let header = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<ShadowHeader>()) };
    let (origin, most) = match header.kind {
        SHADOW_FROM_CLIENT => (Origin::Client, MAX_SHADOW_PAYLOAD),
        SHADOW_FROM_LIVE => (Origin::Live, SHADOW_REPLY_PREFIX),
        other => return Err(RecordError::Kind(other)),
    };
    let payload = &bytes[SHADOW_HEADER_LEN..];
    let said = usize::from(header.captured);
    if said != payload.len() || said > most || said as u64 > u64::from(header.wire_len) {
        return Err(RecordError::Length {
            said,
            carried: payload.len(),
        });
    }
    Ok(Record {
        header,
        origin,
        payload,
    })
}

/// A record as the dataplane writes it, for tests that play the
/// dataplane.
#[cfg(test)]
pub(crate) fn encode(header: &ShadowHeader, payload: &[u8]) -> Vec<u8> {
    // SAFETY: plain data without padding, viewed as its bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (header as *const ShadowHeader).cast::<u8>(),
            SHADOW_HEADER_LEN,
        )
    };
    [bytes, payload].concat()
}

/// The ring, read when the kernel signals records.
pub struct RingReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl RingReader {
    /// Needs a tokio runtime: epoll tells of new records.
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the ring owns its map's descriptor, open and unchanged
        // until the ring is dropped, which the `AsyncFd` owning it does.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }?;
        Ok(Self { ring })
    }

    /// Waits for records, then hands every one there is to `each` (at
    /// most `limit`, so that other work gets its turn); returns how many.
    pub async fn read(&mut self, limit: usize, mut each: impl FnMut(&[u8])) -> io::Result<usize> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            let ring = guard.get_inner_mut();
            let mut read = 0;
            while read < limit {
                let Some(item) = ring.next() else {
                    break;
                };
                each(&item);
                read += 1;
            }
            if read == 0 {
                guard.clear_ready();
                continue;
            }
            return Ok(read);
        }
    }

    /// Every record already in the ring, without waiting.
    pub fn drain(&mut self, mut each: impl FnMut(&[u8])) -> usize {
        let ring = self.ring.get_mut();
        let mut read = 0;
        while let Some(item) = ring.next() {
            each(&item);
            read += 1;
        }
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bluegreen_common::FlowKey;

    fn record(kind: u8, captured: u16, wire_len: u32, payload: &[u8]) -> Vec<u8> {
        let header = ShadowHeader {
            at_ns: 7,
            key: FlowKey::default(),
            seq: 1000u32.to_be_bytes(),
            wire_len,
            captured,
            kind,
            tcp_flags: 0x18,
            counter_slot: 3,
            reserved: [0; 2],
        };
        encode(&header, payload)
    }

    #[test]
    fn good_records_parse() {
        let bytes = record(SHADOW_FROM_CLIENT, 3, 3, b"GET");
        let parsed = parse(&bytes).expect("a whole client record parses");
        assert_eq!(
            (parsed.origin, parsed.payload, parsed.seq()),
            (Origin::Client, &b"GET"[..], 1000)
        );
        let bytes = record(SHADOW_FROM_LIVE, 4, 1400, b"HTTP");
        let parsed = parse(&bytes).expect("a reply prefix parses");
        assert_eq!(
            (parsed.origin, parsed.header.wire_len),
            (Origin::Live, 1400)
        );
    }

    #[test]
    fn bad_records_are_refused() {
        assert_eq!(parse(&[0; 10]).unwrap_err(), RecordError::Short(10));
        assert_eq!(
            parse(&record(9, 0, 0, b"")).unwrap_err(),
            RecordError::Kind(9)
        );
        assert_eq!(
            parse(&record(SHADOW_FROM_CLIENT, 5, 5, b"GET")).unwrap_err(),
            RecordError::Length {
                said: 5,
                carried: 3
            },
            "a record shorter than it says"
        );
        assert!(
            parse(&record(SHADOW_FROM_LIVE, 17, 17, &[b'x'; 17])).is_err(),
            "a reply record carries a prefix, never more"
        );
        assert!(
            parse(&record(SHADOW_FROM_CLIENT, 4, 3, b"GETS")).is_err(),
            "more bytes than were on the wire"
        );
    }
}

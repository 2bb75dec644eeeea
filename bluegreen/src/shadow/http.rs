//! Incremental HTTP/1.1 framing (RFC 9112) for shadow traffic: where each
//! request of a client's byte stream ends, so that allowed requests can be
//! replayed one by one, and where each answer of the idle color ends, so
//! that its figures can be taken without keeping its body.
//!
//! Both parsers take bytes as they arrive, in pieces of any size. Once a
//! parser has failed it keeps failing: the caller then treats the rest of
//! the flow as opaque bytes, since a framing error leaves no way to find the
//! next message boundary.

/// The largest head (start line and fields) either parser buffers, and the
/// largest trailer section of a chunked body.
const HEAD_LIMIT: usize = 64 * 1024;

/// The largest chunk-size line (size and extensions): real ones are a few
/// bytes, so a longer one is an attack or garbage.
const CHUNK_LINE_LIMIT: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("the message head exceeds {HEAD_LIMIT} bytes")]
    HeadTooLarge,
    #[error("the request body exceeds the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("malformed request line {0:?}")]
    BadRequestLine(String),
    #[error("malformed status line {0:?}")]
    BadStatusLine(String),
    #[error("malformed header field {0:?}")]
    BadHeader(String),
    #[error("invalid Content-Length {0:?}")]
    BadContentLength(String),
    #[error("Content-Length values differ")]
    ConflictingContentLength,
    #[error("both Content-Length and Transfer-Encoding are present (request smuggling)")]
    LengthAndTransferEncoding,
    #[error("Transfer-Encoding {0:?} does not end in chunked")]
    UnsupportedTransferEncoding(String),
    #[error("Transfer-Encoding in an HTTP/1.0 message")]
    TransferEncodingInHttp10,
    #[error("a chunk-size line exceeds {CHUNK_LINE_LIMIT} bytes")]
    ChunkLineTooLong,
    #[error("malformed chunked body: {0}")]
    BadChunk(&'static str),
    #[error("the trailer section exceeds {HEAD_LIMIT} bytes")]
    TrailersTooLarge,
    #[error("the allow-list is empty: nothing would be replayed")]
    EmptyAllowList,
    #[error("allow-list rule {rule:?}: {reason}")]
    BadRule { rule: String, reason: &'static str },
}

/// One complete request of a client's byte stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent: the path with its query.
    pub target: String,
    /// The exact bytes of the whole request, head and body: what is
    /// replayed. Blank lines a client sends between requests (allowed
    /// before a request line) open the next request's bytes, so the
    /// requests' bytes put end to end are the stream itself.
    pub raw: Vec<u8>,
}

/// Splits a client's byte stream into requests.
#[derive(Debug)]
pub struct RequestParser {
    max_request_bytes: usize,
    /// The current request's bytes, then any that follow it.
    buf: Vec<u8>,
    state: RequestState,
    failed: Option<HttpError>,
}

#[derive(Debug)]
enum RequestState {
    Head(HeadScan),
    Body {
        head_len: usize,
        line: RequestLine,
        body: RequestBody,
    },
    Complete {
        len: usize,
        line: RequestLine,
    },
}

#[derive(Debug, Default)]
struct RequestLine {
    method: String,
    target: String,
}

#[derive(Debug)]
enum RequestBody {
    /// Complete once the buffer reaches `end`.
    Length { end: usize },
    /// `pos`: how far the decoder has read.
    Chunked { decoder: Chunked, pos: usize },
}

impl RequestParser {
    /// A parser that refuses a request whose body (as sent, chunk framing
    /// included) exceeds `max_request_bytes`: replaying it would mean
    /// buffering all of it.
    pub fn new(max_request_bytes: usize) -> RequestParser {
        RequestParser {
            max_request_bytes,
            buf: Vec::new(),
            state: RequestState::Head(HeadScan::default()),
            failed: None,
        }
    }

    /// Appends the next bytes of the stream. Errors found in the current
    /// request come out here as soon as they are seen.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), HttpError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        self.buf.extend_from_slice(bytes);
        self.advance_or_fail()
    }

    /// The bytes held: the request not yet complete, and any after it.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether the stream cannot be HTTP at all: its first line failed to
    /// parse and names no HTTP version. Any other failure is of a request
    /// that may be one the allow-list refuses, so it must not be replayed
    /// as opaque bytes.
    pub fn is_not_http(&self) -> bool {
        let first_line = self
            .buf
            .split(|&byte| byte == b'\n')
            .next()
            .unwrap_or_default();
        matches!(self.failed, Some(HttpError::BadRequestLine(_)))
            && !first_line.windows(5).any(|window| window == b"HTTP/")
    }

    /// The bytes held, for a stream that turned out not to be HTTP.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// The next complete request, if its last byte has been pushed.
    pub fn next_request(&mut self) -> Result<Option<Request>, HttpError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        self.advance_or_fail()?;
        let state = std::mem::replace(&mut self.state, RequestState::Head(HeadScan::default()));
        let RequestState::Complete { len, line } = state else {
            self.state = state;
            return Ok(None);
        };
        let rest = self.buf.split_off(len);
        let raw = std::mem::replace(&mut self.buf, rest);
        Ok(Some(Request {
            method: line.method,
            target: line.target,
            raw,
        }))
    }

    fn advance_or_fail(&mut self) -> Result<(), HttpError> {
        self.advance()
            .inspect_err(|error| self.failed = Some(error.clone()))
    }

    /// Reads the current request as far as the buffer allows, and no
    /// further: what follows a complete request waits for `next_request`.
    fn advance(&mut self) -> Result<(), HttpError> {
        loop {
            match &mut self.state {
                RequestState::Head(scan) => {
                    let Some(head_len) = scan.advance(&self.buf)? else {
                        return Ok(());
                    };
                    let head = Head::parse(&self.buf[..head_len])?;
                    let line = parse_request_line(head.start)?;
                    let framing = framing(&head, true)?;
                    self.state = match framing {
                        Framing::Length(length) => {
                            let length = usize::try_from(length)
                                .ok()
                                .filter(|length| *length <= self.max_request_bytes)
                                .ok_or(HttpError::TooLarge {
                                    limit: self.max_request_bytes,
                                })?;
                            RequestState::Body {
                                head_len,
                                line,
                                body: RequestBody::Length {
                                    end: head_len + length,
                                },
                            }
                        }
                        Framing::Chunked => RequestState::Body {
                            head_len,
                            line,
                            body: RequestBody::Chunked {
                                decoder: Chunked::default(),
                                pos: head_len,
                            },
                        },
                        // Close-delimited bodies exist only in responses.
                        Framing::None | Framing::Close => RequestState::Complete {
                            len: head_len,
                            line,
                        },
                    };
                }
                RequestState::Body {
                    head_len,
                    line,
                    body,
                } => {
                    let end = match body {
                        RequestBody::Length { end } => {
                            if self.buf.len() < *end {
                                return Ok(());
                            }
                            *end
                        }
                        RequestBody::Chunked { decoder, pos } => {
                            let (read, done) = decoder.feed(&self.buf[*pos..])?;
                            *pos += read;
                            if *pos - *head_len > self.max_request_bytes {
                                return Err(HttpError::TooLarge {
                                    limit: self.max_request_bytes,
                                });
                            }
                            if !done {
                                return Ok(());
                            }
                            *pos
                        }
                    };
                    let line = std::mem::take(line);
                    self.state = RequestState::Complete { len: end, line };
                }
                RequestState::Complete { .. } => return Ok(()),
            }
        }
    }
}

/// How far a response has been read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseProgress {
    /// The final status, once its head is read: interim 1xx statuses are
    /// not reported, but 101 is final (what follows is not HTTP).
    pub status: Option<u16>,
    pub complete: bool,
    /// How many bytes of the last push belong to this response: the rest
    /// start the next one.
    pub consumed: usize,
}

/// Follows one response (with any 1xx responses before it) without keeping
/// its body: only the head, up to 64 KiB, and the chunk decoder's current
/// line are buffered, so a long event stream costs no memory.
#[derive(Debug)]
pub struct ResponseParser {
    /// A HEAD request's response has no body whatever its fields say.
    head_request: bool,
    /// A successful CONNECT turns the connection into a tunnel.
    connect_request: bool,
    head: Vec<u8>,
    scan: HeadScan,
    state: ResponseState,
    status: Option<u16>,
    failed: Option<HttpError>,
}

#[derive(Debug)]
enum ResponseState {
    Head,
    Length(u64),
    Chunked(Chunked),
    Close,
    Complete,
}

impl ResponseParser {
    /// A parser for the response to a `request_method` request: the method
    /// decides whether the response can have a body.
    pub fn new(request_method: &str) -> ResponseParser {
        ResponseParser {
            head_request: request_method == "HEAD",
            connect_request: request_method == "CONNECT",
            head: Vec::new(),
            scan: HeadScan::default(),
            state: ResponseState::Head,
            status: None,
            failed: None,
        }
    }

    /// Reads the next bytes of the answer. Once the response is complete,
    /// nothing more is consumed: the next response needs a new parser.
    pub fn push(&mut self, bytes: &[u8]) -> Result<ResponseProgress, HttpError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let consumed = self
            .advance(bytes)
            .inspect_err(|error| self.failed = Some(error.clone()))?;
        Ok(ResponseProgress {
            status: self.status,
            complete: matches!(self.state, ResponseState::Complete),
            consumed,
        })
    }

    /// The server closed the connection: a close-delimited body ends here.
    /// Whether the response was complete and well-formed: a close before
    /// the end of a head, of a Content-Length body or of a chunked body
    /// truncates the response.
    pub fn finish_on_close(&mut self) -> bool {
        if self.failed.is_some() {
            return false;
        }
        match self.state {
            ResponseState::Close | ResponseState::Complete => {
                self.state = ResponseState::Complete;
                true
            }
            ResponseState::Head | ResponseState::Length(_) | ResponseState::Chunked(_) => false,
        }
    }

    fn advance(&mut self, bytes: &[u8]) -> Result<usize, HttpError> {
        let mut at = 0;
        loop {
            match &mut self.state {
                ResponseState::Head => {
                    let take = (HEAD_LIMIT - self.head.len()).min(bytes.len() - at);
                    let wanted = self.head.len() + take;
                    if wanted > self.head.capacity() {
                        // Doubling as usual, but never past the limit.
                        let capacity = wanted.next_power_of_two().min(HEAD_LIMIT);
                        self.head.reserve_exact(capacity - self.head.len());
                    }
                    self.head.extend_from_slice(&bytes[at..at + take]);
                    let Some(end) = self.scan.advance(&self.head)? else {
                        return Ok(at + take);
                    };
                    // Bytes past the head's end belong to the body.
                    at += take - (self.head.len() - end);
                    self.head.truncate(end);
                    self.state = self.read_head()?;
                    self.head.clear();
                    self.scan = HeadScan::default();
                }
                ResponseState::Length(remaining) => {
                    let available = (bytes.len() - at) as u64;
                    let read = (*remaining).min(available);
                    at += read as usize;
                    *remaining -= read;
                    if *remaining > 0 {
                        return Ok(at);
                    }
                    self.state = ResponseState::Complete;
                }
                ResponseState::Chunked(decoder) => {
                    let (read, done) = decoder.feed(&bytes[at..])?;
                    at += read;
                    if !done {
                        return Ok(at);
                    }
                    self.state = ResponseState::Complete;
                }
                ResponseState::Close => return Ok(bytes.len()),
                ResponseState::Complete => return Ok(at),
            }
        }
    }

    /// The state after a complete head (RFC 9112 section 6.3).
    fn read_head(&mut self) -> Result<ResponseState, HttpError> {
        let head = Head::parse(&self.head)?;
        let status = parse_status(head.start)
            .ok_or_else(|| HttpError::BadStatusLine(excerpt(head.start)))?;
        // An interim response: the final one follows. 101 is final for
        // HTTP: what follows is another protocol.
        if (100..200).contains(&status) && status != 101 {
            return Ok(ResponseState::Head);
        }
        self.status = Some(status);
        if self.head_request
            || status < 200
            || status == 204
            || status == 304
            || (self.connect_request && (200..300).contains(&status))
        {
            return Ok(ResponseState::Complete);
        }
        Ok(match framing(&head, false)? {
            Framing::None | Framing::Length(0) => ResponseState::Complete,
            Framing::Length(length) => ResponseState::Length(length),
            Framing::Chunked => ResponseState::Chunked(Chunked::default()),
            Framing::Close => ResponseState::Close,
        })
    }
}

/// In order: the discriminant indexes [`super::figures::ColorFigures::status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusClass {
    Informational = 0,
    Success = 1,
    Redirect = 2,
    ClientError = 3,
    ServerError = 4,
}

/// The class of a status. The parsers only report 100 to 599; anything
/// else falls in the nearest class rather than needing a sixth.
pub fn status_class(status: u16) -> StatusClass {
    match status {
        ..200 => StatusClass::Informational,
        200..300 => StatusClass::Success,
        300..400 => StatusClass::Redirect,
        400..500 => StatusClass::ClientError,
        500.. => StatusClass::ServerError,
    }
}

/// The status of a response from its first bytes (`HTTP/1.1 200 `), or
/// `None` if they are not the start of a status line: the kernel passes
/// only each reply segment's first 16 bytes, so the reason phrase and the
/// line's end may be cut off.
pub fn parse_status_line(prefix: &[u8]) -> Option<u16> {
    const START: usize = "HTTP/1.1 200".len();
    let (start, after) = prefix.split_at_checked(START)?;
    match after.first() {
        None | Some(b' ' | b'\r' | b'\n') => parse_status(start),
        Some(_) => None,
    }
}

/// The status of a whole status line, `HTTP/1.x SP 3DIGIT [SP reason]`. A
/// missing reason's separating space is tolerated: servers omit it.
fn parse_status(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (minor, rest) = rest.split_first()?;
    let rest = rest.strip_prefix(b" ")?;
    let (code, reason) = rest.split_at_checked(3)?;
    if !minor.is_ascii_digit()
        || !code.iter().all(u8::is_ascii_digit)
        || !(reason.is_empty() || reason[0] == b' ')
        || reason.iter().any(|&b| b != b'\t' && b.is_ascii_control())
    {
        return None;
    }
    let status = code
        .iter()
        .fold(0u16, |status, digit| status * 10 + u16::from(digit - b'0'));
    (100..=599).contains(&status).then_some(status)
}

/// The requests worth replaying, e.g. only inference calls: others may
/// change state (a replayed `DELETE` would delete twice) or cost nothing
/// worth comparing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowList {
    rules: Vec<Rule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    method: String,
    path: PathRule,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PathRule {
    Any,
    Exact(String),
    Prefix(String),
}

/// The rules of [`AllowList::default`]: an LLM service's inference calls,
/// and reads.
pub const DEFAULT_ALLOW: [&str; 4] = [
    "POST /v1/completions",
    "POST /v1/chat/completions",
    "POST /v1/embeddings",
    "GET",
];

impl AllowList {
    /// Rules `METHOD` (any path) or `METHOD /path`, where a path ending in
    /// `*` is a prefix. Methods are case-sensitive (RFC 9110), so a
    /// lower-case one is refused as the typo it surely is.
    pub fn parse(rules: &[String]) -> Result<AllowList, HttpError> {
        if rules.is_empty() {
            return Err(HttpError::EmptyAllowList);
        }
        let rules = rules
            .iter()
            .map(|rule| parse_rule(rule))
            .collect::<Result<_, _>>()?;
        Ok(AllowList { rules })
    }

    /// The rules as they would be written, for a record another process
    /// reads them back from.
    pub fn rules(&self) -> Vec<String> {
        self.rules
            .iter()
            .map(|rule| match &rule.path {
                PathRule::Any => rule.method.clone(),
                PathRule::Exact(path) => format!("{} {path}", rule.method),
                PathRule::Prefix(prefix) => format!("{} {prefix}*", rule.method),
            })
            .collect()
    }

    /// Whether a request is replayed. The query string plays no part: the
    /// same call with other arguments is the same kind of call.
    pub fn allows(&self, method: &str, target: &str) -> bool {
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        self.rules.iter().any(|rule| {
            rule.method == method
                && match &rule.path {
                    PathRule::Any => true,
                    PathRule::Exact(exact) => path == exact,
                    PathRule::Prefix(prefix) => path.starts_with(prefix.as_str()),
                }
        })
    }
}

impl Default for AllowList {
    fn default() -> AllowList {
        AllowList {
            rules: DEFAULT_ALLOW
                .iter()
                .map(|rule| parse_rule(rule).expect("the default rules are valid"))
                .collect(),
        }
    }
}

fn parse_rule(rule: &str) -> Result<Rule, HttpError> {
    let bad = |reason| HttpError::BadRule {
        rule: rule.to_owned(),
        reason,
    };
    let mut words = rule.split_whitespace();
    let method = words
        .next()
        .ok_or_else(|| bad("empty rule: use METHOD or METHOD /path"))?;
    let path = words.next();
    if words.next().is_some() {
        return Err(bad("too many words: use METHOD or METHOD /path"));
    }
    if !method.bytes().all(is_tchar) {
        return Err(bad("the method is not an HTTP token"));
    }
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(bad("methods are case-sensitive: write it in upper case"));
    }
    let path = match path {
        None => PathRule::Any,
        Some(path) => {
            if !path.starts_with('/') {
                return Err(bad("the path must start with /"));
            }
            if path.contains('?') {
                return Err(bad("the query string is ignored in matching: drop it"));
            }
            match path.strip_suffix('*') {
                Some(prefix) if !prefix.contains('*') => PathRule::Prefix(prefix.to_owned()),
                Some(_) => return Err(bad("* may only end the path")),
                None if path.contains('*') => return Err(bad("* may only end the path")),
                None => PathRule::Exact(path.to_owned()),
            }
        }
    };
    Ok(Rule {
        method: method.to_owned(),
        path,
    })
}

/// Finds the end of a head as bytes arrive, scanning each byte once however
/// small the pieces.
#[derive(Debug, Default)]
struct HeadScan {
    line_start: usize,
    scanned: usize,
    /// Whether a non-empty line was seen: blank lines before the start line
    /// are skipped, not taken for the end of the head.
    started: bool,
}

impl HeadScan {
    /// The head's length once `bytes` (which start at the head) hold its
    /// final empty line. Bare LF line ends are accepted, as RFC 9112 allows.
    fn advance(&mut self, bytes: &[u8]) -> Result<Option<usize>, HttpError> {
        let limit = bytes.len().min(HEAD_LIMIT);
        while let Some(offset) = bytes[self.scanned..limit].iter().position(|&b| b == b'\n') {
            let lf = self.scanned + offset;
            let line = strip_cr(&bytes[self.line_start..lf]);
            self.scanned = lf + 1;
            self.line_start = lf + 1;
            if !line.is_empty() {
                self.started = true;
            } else if self.started {
                return Ok(Some(lf + 1));
            }
        }
        self.scanned = limit;
        if limit == HEAD_LIMIT {
            return Err(HttpError::HeadTooLarge);
        }
        Ok(None)
    }
}

/// A complete head: its start line and fields, names still in their case.
struct Head<'a> {
    start: &'a [u8],
    fields: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> Head<'a> {
    fn parse(head: &'a [u8]) -> Result<Head<'a>, HttpError> {
        let mut lines = head
            .split(|&b| b == b'\n')
            .map(strip_cr)
            .skip_while(|line| line.is_empty());
        let start = lines.next().unwrap_or_default();
        let mut fields = Vec::new();
        for line in lines.take_while(|line| !line.is_empty()) {
            fields.push(parse_field(line)?);
        }
        Ok(Head { start, fields })
    }

    fn values(&self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.fields
            .iter()
            .filter(move |(field, _)| field.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| *value)
    }

    fn is_http10(&self) -> bool {
        self.start.ends_with(b" HTTP/1.0") || self.start.starts_with(b"HTTP/1.0 ")
    }
}

/// `name: value`. A line folded onto the previous one (obs-fold) is refused,
/// as RFC 9112 lets a recipient do: proxies disagree on what it means.
fn parse_field(line: &[u8]) -> Result<(&[u8], &[u8]), HttpError> {
    let bad = || HttpError::BadHeader(excerpt(line));
    let colon = line.iter().position(|&b| b == b':').ok_or_else(bad)?;
    let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
    if name.is_empty()
        || !name.iter().copied().all(is_tchar)
        || value.iter().any(|&b| b != b'\t' && b.is_ascii_control())
    {
        return Err(bad());
    }
    Ok((name, value))
}

fn parse_request_line(line: &[u8]) -> Result<RequestLine, HttpError> {
    let bad = || HttpError::BadRequestLine(excerpt(line));
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let version_ok = version
        .strip_prefix(b"HTTP/1.")
        .is_some_and(|minor| minor.len() == 1 && minor[0].is_ascii_digit());
    if method.is_empty()
        || !method.iter().copied().all(is_tchar)
        || target.is_empty()
        || !target.iter().all(|b| b.is_ascii_graphic())
        || !version_ok
    {
        return Err(bad());
    }
    // Both are ASCII, checked above.
    Ok(RequestLine {
        method: lossy(method),
        target: lossy(target),
    })
}

enum Framing {
    /// A request without a body.
    None,
    Length(u64),
    Chunked,
    /// A response whose body ends when the server closes.
    Close,
}

/// How the body is delimited (RFC 9112 section 6). Every ambiguity is an
/// error, not a guess: two readings of one stream is request smuggling.
fn framing(head: &Head, request: bool) -> Result<Framing, HttpError> {
    let mut length = None;
    for value in head.values("content-length") {
        for item in value.split(|&b| b == b',').map(trim_ows) {
            // Digits only: `parse` would take a sign.
            let parsed = std::str::from_utf8(item)
                .ok()
                .filter(|item| !item.is_empty() && item.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|item| item.parse::<u64>().ok())
                .ok_or_else(|| HttpError::BadContentLength(excerpt(value)))?;
            if length.is_some_and(|length| length != parsed) {
                return Err(HttpError::ConflictingContentLength);
            }
            length = Some(parsed);
        }
    }
    let codings: Vec<&[u8]> = head
        .values("transfer-encoding")
        .flat_map(|value| value.split(|&b| b == b','))
        .map(trim_ows)
        .filter(|coding| !coding.is_empty())
        .collect();
    // An empty Transfer-Encoding is still one: ignoring it is how two
    // readers end up framing the same bytes differently.
    if head.values("transfer-encoding").next().is_none() {
        return Ok(match (length, request) {
            (Some(length), _) => Framing::Length(length),
            (None, true) => Framing::None,
            (None, false) => Framing::Close,
        });
    }
    if length.is_some() {
        return Err(HttpError::LengthAndTransferEncoding);
    }
    if head.is_http10() {
        return Err(HttpError::TransferEncodingInHttp10);
    }
    let is_chunked = |coding: &&[u8]| coding.eq_ignore_ascii_case(b"chunked");
    let unsupported = || HttpError::UnsupportedTransferEncoding(excerpt(&codings.join(&b","[..])));
    let Some((last, before)) = codings.split_last() else {
        return Err(unsupported());
    };
    if before.iter().any(is_chunked) {
        return Err(unsupported());
    }
    match (is_chunked(last), request) {
        (true, _) => Ok(Framing::Chunked),
        (false, false) => Ok(Framing::Close),
        (false, true) => Err(unsupported()),
    }
}

/// A streaming decoder of a chunked body: it reports how many bytes the
/// body takes without keeping them, holding only the current size or
/// trailer line.
#[derive(Debug, Default)]
struct Chunked {
    state: ChunkState,
    line: Vec<u8>,
    trailer_bytes: usize,
}

#[derive(Debug, Default)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataCr,
    DataLf,
    Trailer,
    Done,
}

impl Chunked {
    /// Reads `bytes` up to the end of the body: how many it took, and
    /// whether the body is complete.
    fn feed(&mut self, bytes: &[u8]) -> Result<(usize, bool), HttpError> {
        let mut at = 0;
        while at < bytes.len() {
            match &mut self.state {
                ChunkState::Size | ChunkState::Trailer => {
                    let rest = &bytes[at..];
                    let lf = rest.iter().position(|&b| b == b'\n');
                    let piece = &rest[..lf.unwrap_or(rest.len())];
                    let trailer = matches!(self.state, ChunkState::Trailer);
                    if trailer {
                        self.trailer_bytes += piece.len() + usize::from(lf.is_some());
                        if self.trailer_bytes > HEAD_LIMIT {
                            return Err(HttpError::TrailersTooLarge);
                        }
                    } else if self.line.len() + piece.len() > CHUNK_LINE_LIMIT {
                        return Err(HttpError::ChunkLineTooLong);
                    }
                    self.line.extend_from_slice(piece);
                    at += piece.len();
                    if lf.is_none() {
                        break;
                    }
                    at += 1;
                    let line = strip_cr(&self.line);
                    self.state = if trailer {
                        if line.is_empty() {
                            ChunkState::Done
                        } else {
                            parse_field(line)?;
                            ChunkState::Trailer
                        }
                    } else {
                        match parse_chunk_size(line)? {
                            0 => ChunkState::Trailer,
                            size => ChunkState::Data(size),
                        }
                    };
                    self.line.clear();
                }
                ChunkState::Data(remaining) => {
                    let read = (*remaining).min((bytes.len() - at) as u64);
                    at += read as usize;
                    *remaining -= read;
                    if *remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                }
                ChunkState::DataCr | ChunkState::DataLf => {
                    self.state = match (&self.state, bytes[at]) {
                        (ChunkState::DataCr, b'\r') => ChunkState::DataLf,
                        (_, b'\n') => ChunkState::Size,
                        _ => return Err(HttpError::BadChunk("chunk data not followed by CRLF")),
                    };
                    at += 1;
                }
                ChunkState::Done => break,
            }
        }
        Ok((at, matches!(self.state, ChunkState::Done)))
    }
}

/// `1*HEXDIG [ BWS ";" chunk-ext ]`: extensions are allowed and ignored.
fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(HttpError::BadChunk("a chunk size is not hexadecimal"));
    }
    let (size, rest) = line.split_at(digits);
    let rest = trim_ows(rest);
    if !(rest.is_empty() || rest[0] == b';')
        || rest.iter().any(|&b| b != b'\t' && b.is_ascii_control())
    {
        return Err(HttpError::BadChunk("malformed chunk extension"));
    }
    std::str::from_utf8(size)
        .ok()
        .and_then(|size| u64::from_str_radix(size, 16).ok())
        .ok_or(HttpError::BadChunk("a chunk size overflows 64 bits"))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !ows(b))
        .map_or(start, |end| end + 1);
    &bytes[start..end]
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The start of what an error is about: a line can be 64 KiB, too much for
/// a log line.
fn excerpt(bytes: &[u8]) -> String {
    const EXCERPT: usize = 80;
    match bytes.get(..EXCERPT) {
        Some(start) if bytes.len() > EXCERPT => format!("{}...", lossy(start)),
        _ => lossy(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1 << 20;

    /// Every request of `input`, pushed in one piece.
    fn requests(input: &[u8]) -> Result<Vec<Request>, HttpError> {
        let mut parser = RequestParser::new(LIMIT);
        parser.push(input)?;
        let mut requests = Vec::new();
        while let Some(request) = parser.next_request()? {
            requests.push(request);
        }
        Ok(requests)
    }

    fn one_request(input: &[u8]) -> Request {
        let requests = requests(input)
            .unwrap_or_else(|error| panic!("{:?}: {error}", String::from_utf8_lossy(input)));
        assert_eq!(requests.len(), 1, "{:?}", String::from_utf8_lossy(input));
        requests.into_iter().next().expect("one")
    }

    fn request_error(input: &[u8]) -> HttpError {
        match requests(input) {
            Ok(requests) => panic!(
                "{:?} parsed as {requests:?}",
                String::from_utf8_lossy(input)
            ),
            Err(error) => error,
        }
    }

    /// Pushes `input` in pieces of `piece` bytes, each piece in one push:
    /// the final progress and the bytes consumed in all.
    fn response(method: &str, input: &[u8], piece: usize) -> (ResponseProgress, usize) {
        let mut parser = ResponseParser::new(method);
        let mut consumed = 0;
        let mut last = None;
        for chunk in input.chunks(piece) {
            let progress = parser
                .push(chunk)
                .unwrap_or_else(|error| panic!("{:?}: {error}", String::from_utf8_lossy(input)));
            consumed += progress.consumed;
            last = Some(progress);
            if progress.complete {
                break;
            }
        }
        (last.expect("some input"), consumed)
    }

    const POST: &[u8] =
        b"POST /v1/completions?stream=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    const CHUNKED: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n5;name=value;flag\r\nhello\r\n6 ; ext=\"q\"\r\n world\r\n0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n";
    const GET: &[u8] = b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n";

    #[test]
    fn a_request_split_at_every_byte_boundary_is_byte_identical() {
        let stream = [POST, CHUNKED, GET].concat();
        for split in 0..=stream.len() {
            let mut parser = RequestParser::new(LIMIT);
            let mut raws = Vec::new();
            for piece in [&stream[..split], &stream[split..]] {
                parser
                    .push(piece)
                    .unwrap_or_else(|error| panic!("split at {split}: {error}"));
                while let Some(request) = parser
                    .next_request()
                    .unwrap_or_else(|error| panic!("split at {split}: {error}"))
                {
                    raws.push(request.raw);
                }
            }
            assert_eq!(raws, [POST, CHUNKED, GET], "split at {split}");
        }
    }

    #[test]
    fn a_request_pushed_byte_by_byte_is_byte_identical() {
        let stream = [CHUNKED, POST].concat();
        let mut parser = RequestParser::new(LIMIT);
        let mut raws = Vec::new();
        for (at, byte) in stream.iter().enumerate() {
            parser
                .push(&[*byte])
                .unwrap_or_else(|error| panic!("byte {at}: {error}"));
            if let Some(request) = parser
                .next_request()
                .unwrap_or_else(|error| panic!("byte {at}: {error}"))
            {
                raws.push(request.raw);
            }
        }
        assert_eq!(raws, [CHUNKED, POST]);
    }

    #[test]
    fn pipelined_requests_come_out_in_order() {
        let blank_then_get = [b"\r\n", GET].concat();
        let all = requests(&[POST, CHUNKED, &blank_then_get, b"HEAD /x HTTP/1.0\r\n\r\n"].concat())
            .expect("valid requests");
        let lines: Vec<_> = all
            .iter()
            .map(|request| (request.method.as_str(), request.target.as_str()))
            .collect();
        assert_eq!(
            lines,
            [
                ("POST", "/v1/completions?stream=1"),
                ("POST", "/v1/chat/completions"),
                ("GET", "/health"),
                ("HEAD", "/x"),
            ]
        );
        assert_eq!(
            all[2].raw, blank_then_get,
            "a blank line opens the next request"
        );
    }

    #[test]
    fn an_incomplete_request_waits_for_its_last_byte() {
        let mut parser = RequestParser::new(LIMIT);
        parser.push(&POST[..POST.len() - 1]).expect("valid so far");
        assert_eq!(parser.next_request(), Ok(None));
        parser.push(&POST[POST.len() - 1..]).expect("valid");
        let request = parser.next_request().expect("valid").expect("complete");
        assert_eq!(request.raw, POST);
        assert_eq!(parser.next_request(), Ok(None));
    }

    #[test]
    fn chunked_bodies_take_extensions_and_trailers() {
        let request = one_request(CHUNKED);
        assert_eq!(request.raw, CHUNKED);
        // Bare LF line ends are accepted too.
        let lf = b"POST /e HTTP/1.1\nTransfer-Encoding: chunked\n\n3\nabc\n0\n\n";
        assert_eq!(one_request(lf).raw, lf);
    }

    #[test]
    fn malformed_chunks_fail() {
        for (body, expected) in [
            (&b"zz\r\n"[..], "not hexadecimal"),
            (b"3 junk\r\nabc\r\n0\r\n\r\n", "extension"),
            (b"3\r\nabcX\r\n0\r\n\r\n", "CRLF"),
            (b"11111111111111111\r\n", "overflows"),
            (b"0\r\nnot a field\r\n\r\n", "header field"),
        ] {
            let input = [
                &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                body,
            ]
            .concat();
            let error = request_error(&input).to_string();
            assert!(error.contains(expected), "{body:?}: {error}");
        }
    }

    #[test]
    fn length_and_transfer_encoding_conflicts_fail() {
        for (head, expected) in [
            (
                &b"Content-Length: 5\r\nContent-Length: 6\r\n"[..],
                HttpError::ConflictingContentLength,
            ),
            (
                b"Content-Length: 5, 6\r\n",
                HttpError::ConflictingContentLength,
            ),
            (
                b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                HttpError::LengthAndTransferEncoding,
            ),
            (
                b"transfer-encoding: chunked\r\nCONTENT-LENGTH: 5\r\n",
                HttpError::LengthAndTransferEncoding,
            ),
            (
                b"Content-Length: -5\r\n",
                HttpError::BadContentLength("-5".to_owned()),
            ),
            (
                b"Content-Length: 99999999999999999999999\r\n",
                HttpError::BadContentLength("99999999999999999999999".to_owned()),
            ),
            (
                b"Transfer-Encoding: gzip\r\n",
                HttpError::UnsupportedTransferEncoding("gzip".to_owned()),
            ),
            (
                b"Transfer-Encoding: \r\n",
                HttpError::UnsupportedTransferEncoding(String::new()),
            ),
            (
                b"Transfer-Encoding: chunked, chunked\r\n",
                HttpError::UnsupportedTransferEncoding("chunked,chunked".to_owned()),
            ),
        ] {
            let input = [&b"POST / HTTP/1.1\r\nHost: a\r\n"[..], head, b"\r\nhello"].concat();
            assert_eq!(
                request_error(&input),
                expected,
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        // The same length twice is one length.
        let twice = b"POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nhi";
        assert_eq!(one_request(twice).raw, twice);
        assert_eq!(
            request_error(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            HttpError::TransferEncodingInHttp10
        );
    }

    #[test]
    fn malformed_heads_fail_and_the_parser_stays_failed() {
        for input in [
            &b"GET /\r\n\r\n"[..],
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(request_error(input), HttpError::BadRequestLine(_)),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        for input in [
            &b"GET / HTTP/1.1\r\nHost a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        ] {
            assert!(
                matches!(request_error(input), HttpError::BadHeader(_)),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let mut long = b"GET / HTTP/1.1\r\nHost".to_vec();
        long.resize(10_000, b'a');
        long.extend_from_slice(b"\r\n\r\n");
        let HttpError::BadHeader(excerpt) = request_error(&long) else {
            panic!("a field without a colon");
        };
        assert_eq!(excerpt.len(), 83, "{excerpt}");
        let mut parser = RequestParser::new(LIMIT);
        parser
            .push(b"GET / HTTP/1.1\r\nHost a\r\n\r\n")
            .expect_err("bad field");
        assert!(parser.push(GET).is_err(), "a failed parser stays failed");
        assert!(
            parser.next_request().is_err(),
            "a failed parser stays failed"
        );
    }

    #[test]
    fn oversized_heads_chunk_lines_and_bodies_fail() {
        let mut head = b"GET / HTTP/1.1\r\nX: ".to_vec();
        head.resize(HEAD_LIMIT, b'a');
        let mut parser = RequestParser::new(LIMIT);
        assert_eq!(parser.push(&head), Err(HttpError::HeadTooLarge));

        let mut line = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;".to_vec();
        line.resize(line.len() + CHUNK_LINE_LIMIT, b'x');
        assert_eq!(request_error(&line), HttpError::ChunkLineTooLong);

        let mut parser = RequestParser::new(4);
        assert_eq!(parser.push(POST), Err(HttpError::TooLarge { limit: 4 }));
        let mut parser = RequestParser::new(5);
        assert_eq!(parser.push(POST), Ok(()), "5 bytes fit a 5-byte limit");

        let mut parser = RequestParser::new(20);
        parser
            .push(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            .expect("head");
        parser
            .push(b"a\r\n0123456789\r\n")
            .expect("15 bytes so far");
        parser.push(b"a\r\n01").expect("20 bytes fit");
        assert_eq!(parser.push(b"2"), Err(HttpError::TooLarge { limit: 20 }));
    }

    #[test]
    fn content_length_responses_end_at_their_length() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 500 Oops\r\n";
        let (progress, consumed) = response("POST", input, input.len());
        assert_eq!(
            progress,
            ResponseProgress {
                status: Some(200),
                complete: true,
                consumed: input.len() - "HTTP/1.1 500 Oops\r\n".len(),
            }
        );
        assert_eq!(consumed, progress.consumed);
        for piece in 1..input.len() {
            let (progress, consumed) = response("POST", input, piece);
            assert!(progress.complete, "pieces of {piece}");
            assert_eq!(consumed, input.len() - 19, "pieces of {piece}");
        }
    }

    #[test]
    fn head_204_304_and_interim_responses_have_no_body() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        let (progress, consumed) = response("HEAD", head, head.len());
        assert_eq!(
            (progress.status, progress.complete, consumed),
            (Some(200), true, head.len())
        );
        let (progress, _) = response("GET", head, head.len());
        assert!(
            !progress.complete,
            "a GET's response has its 100 bytes to come"
        );
        for status in [204, 304] {
            let input = format!("HTTP/1.1 {status} X\r\nContent-Length: 100\r\n\r\n");
            let (progress, consumed) = response("GET", input.as_bytes(), 1);
            assert_eq!(
                (progress.status, progress.complete, consumed),
                (Some(status), true, input.len()),
                "{status}"
            );
        }
        let input = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
        for piece in 1..=input.len() {
            let (progress, consumed) = response("POST", input, piece);
            assert_eq!(
                (progress.status, progress.complete, consumed),
                (Some(201), true, input.len()),
                "pieces of {piece}"
            );
        }
        let mut parser = ResponseParser::new("POST");
        let progress = parser
            .push(b"HTTP/1.1 100 Continue\r\n\r\n")
            .expect("valid");
        assert_eq!(
            progress,
            ResponseProgress {
                status: None,
                complete: false,
                consumed: 25
            },
            "an interim status is not the response's"
        );
    }

    #[test]
    fn a_chunked_event_stream_pushed_byte_by_byte_completes_in_bounded_memory() {
        let mut stream = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for event in 0..2000 {
            let data = format!("data: {{\"token\": {event}}}\n\n");
            stream.extend_from_slice(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes());
        }
        stream.extend_from_slice(b"0\r\n\r\n");
        let mut parser = ResponseParser::new("POST");
        for (at, byte) in stream.iter().enumerate() {
            let progress = parser
                .push(&[*byte])
                .unwrap_or_else(|error| panic!("byte {at}: {error}"));
            assert_eq!(progress.consumed, 1, "byte {at}");
            assert_eq!(progress.complete, at == stream.len() - 1, "byte {at}");
            assert!(parser.head.capacity() <= HEAD_LIMIT, "byte {at}");
            if let ResponseState::Chunked(decoder) = &parser.state {
                assert!(decoder.line.capacity() <= CHUNK_LINE_LIMIT, "byte {at}");
            }
        }
        assert_eq!(
            parser.push(b"more"),
            Ok(ResponseProgress {
                status: Some(200),
                complete: true,
                consumed: 0
            }),
            "nothing after the end belongs to the response"
        );
    }

    #[test]
    fn heads_and_trailers_are_bounded_however_they_arrive() {
        let mut large = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        large.resize(60 * 1024, b'a');
        large.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
        let (progress, consumed) = response("GET", &large, 1000);
        assert_eq!((progress.complete, consumed), (true, large.len()));
        let mut parser = ResponseParser::new("GET");
        for piece in large[..large.len() - 1].chunks(1000) {
            parser.push(piece).expect("valid so far");
            assert!(
                parser.head.capacity() <= HEAD_LIMIT,
                "{}",
                parser.head.capacity()
            );
        }

        let trailers = |size: usize| {
            let mut input =
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: ".to_vec();
            input.resize(input.len() + size, b'a');
            input.extend_from_slice(b"\r\n\r\n");
            input
        };
        let fits = trailers(40 * 1024);
        let (progress, consumed) = response("GET", &fits, 1);
        assert_eq!((progress.complete, consumed), (true, fits.len()));
        let mut parser = ResponseParser::new("GET");
        assert_eq!(
            parser.push(&trailers(HEAD_LIMIT)),
            Err(HttpError::TrailersTooLarge)
        );
    }

    #[test]
    fn a_close_delimited_response_ends_with_the_connection() {
        let mut parser = ResponseParser::new("GET");
        let progress = parser
            .push(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: 1\n\n")
            .expect("valid");
        assert_eq!((progress.status, progress.complete), (Some(200), false));
        assert_eq!(parser.push(b"data: 2\n\n").expect("valid").consumed, 9);
        assert!(parser.finish_on_close(), "the close ends the body");
        assert!(parser.push(b"x").expect("complete").complete);

        // A non-chunked transfer coding is close-delimited in a response.
        let mut parser = ResponseParser::new("GET");
        parser
            .push(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc")
            .expect("valid");
        assert!(parser.finish_on_close());
    }

    #[test]
    fn a_close_before_the_end_truncates_the_response() {
        for input in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\nContent-Le",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        ] {
            let mut parser = ResponseParser::new("GET");
            parser.push(input).expect("valid so far");
            assert!(
                !parser.finish_on_close(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let mut parser = ResponseParser::new("GET");
        parser
            .push(b"HTTP/1.1 2000 OK\r\n\r\n")
            .expect_err("bad status");
        assert!(
            !parser.finish_on_close(),
            "a failed response is not well-formed"
        );
    }

    #[test]
    fn malformed_responses_fail() {
        for (input, expected) in [
            (&b"HTTP/1.1 20 OK\r\n\r\n"[..], "status line"),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "status line"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "differ",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "both",
            ),
        ] {
            let mut parser = ResponseParser::new("GET");
            let error = parser.push(input).expect_err("malformed").to_string();
            assert!(
                error.contains(expected),
                "{:?}: {error}",
                String::from_utf8_lossy(input)
            );
        }
        let mut parser = ResponseParser::new("GET");
        let mut head = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        head.resize(HEAD_LIMIT + 10, b'a');
        assert_eq!(parser.push(&head), Err(HttpError::HeadTooLarge));
        assert_eq!(
            parser.push(b"\r\n\r\n"),
            Err(HttpError::HeadTooLarge),
            "stays failed"
        );
    }

    #[test]
    fn status_lines_from_prefixes() {
        for (prefix, expected) in [
            (&b"HTTP/1.1 200 OK\r"[..], Some(200)),
            (b"HTTP/1.0 503 Ser", Some(503)),
            (b"HTTP/1.1 404", Some(404)),
            (b"HTTP/1.1 204\r\nDa", Some(204)),
            (b"HTTP/1.1 20", None),
            (b"HTTP/1.1 2000 O", None),
            (b"HTTP/1.1 099 Hm", None),
            (b"HTTP/1.1 600 Hm", None),
            (b"HTTP/2 200 OK\r\n", None),
            (b"http/1.1 200 OK", None),
            (b"HTTP/1.1 2x0 OK", None),
            (b"data: {\"a\": 1}\n", None),
            (b"", None),
        ] {
            assert_eq!(
                parse_status_line(prefix),
                expected,
                "{:?}",
                String::from_utf8_lossy(prefix)
            );
        }
    }

    #[test]
    fn statuses_fall_in_their_class() {
        for (status, class) in [
            (100, StatusClass::Informational),
            (200, StatusClass::Success),
            (308, StatusClass::Redirect),
            (429, StatusClass::ClientError),
            (599, StatusClass::ServerError),
        ] {
            assert_eq!(status_class(status), class, "{status}");
        }
    }

    fn rules(rules: &[&str]) -> Result<AllowList, HttpError> {
        AllowList::parse(
            &rules
                .iter()
                .map(|rule| rule.to_string())
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn the_allow_list_matches_methods_and_paths() {
        let default = AllowList::default();
        assert_eq!(default, rules(&DEFAULT_ALLOW).expect("valid defaults"));
        for (method, target, allowed) in [
            ("POST", "/v1/completions", true),
            ("POST", "/v1/chat/completions?stream=true", true),
            ("POST", "/v1/embeddings", true),
            ("POST", "/v1/embeddings/x", false),
            ("POST", "/v1/completion", false),
            ("GET", "/anything?at=all", true),
            ("DELETE", "/v1/completions", false),
            ("post", "/v1/completions", false),
        ] {
            assert_eq!(default.allows(method, target), allowed, "{method} {target}");
        }
        let prefix = rules(&["POST /v1/*", "PUT /exact"]).expect("valid");
        for (method, target, allowed) in [
            ("POST", "/v1/", true),
            ("POST", "/v1/anything/deeper?q", true),
            ("POST", "/v1", false),
            ("PUT", "/exact?q=1", true),
            ("PUT", "/exact/", false),
            ("GET", "/v1/x", false),
        ] {
            assert_eq!(prefix.allows(method, target), allowed, "{method} {target}");
        }
    }

    #[test]
    fn bad_allow_list_rules_are_refused() {
        for (rule, expected) in [
            ("", "empty rule"),
            ("POST /a /b", "too many words"),
            ("post /v1", "upper case"),
            ("PO(ST", "token"),
            ("POST v1/completions", "start with /"),
            ("POST /v1?x=1", "query"),
            ("POST /v1/*/x", "only end"),
            ("POST /v1/**", "only end"),
        ] {
            let error = rules(&[rule]).expect_err(rule).to_string();
            assert!(error.contains(expected), "{rule:?}: {error}");
            assert!(error.contains(&format!("{rule:?}")), "{rule:?}: {error}");
        }
        assert_eq!(rules(&[]), Err(HttpError::EmptyAllowList));
    }
}

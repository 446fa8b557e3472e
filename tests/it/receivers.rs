//! Real receivers for notification tests: [`HttpRecorder`], an HTTP/1.1 server on
//! 127.0.0.1:0 that records every request and answers a scripted status sequence, and
//! [`SmtpSink`], an SMTP server that speaks enough of RFC 5321 (and AUTH PLAIN/LOGIN) for
//! lettre and records every message.
//!
//! Both run on plain threads, one per connection, and stop accepting when dropped. Waits poll
//! with [`DEADLINE`](crate::support::DEADLINE).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::support::{poll_for, DEADLINE};

/// How long a receiver waits for a client that stops talking.
const IDLE: Duration = Duration::from_secs(30);

/// One request an [`HttpRecorder`] received.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    /// `POST`, `GET`...
    pub(crate) method: String,
    /// The request target (`/alerts?x=1`).
    pub(crate) path: String,
    /// Header names lowercased; a repeated header keeps its last value.
    pub(crate) headers: BTreeMap<String, String>,
    /// The body as JSON, or as a JSON string when it is not JSON (`Null` when empty).
    pub(crate) body: Value,
    /// The status the recorder answered.
    pub(crate) answered: u16,
}

impl Recorded {
    /// The header `name` (any case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// An HTTP server on 127.0.0.1:0 that records requests and answers scripted statuses.
pub(crate) struct HttpRecorder {
    address: SocketAddr,
    shared: Arc<HttpShared>,
}

struct HttpShared {
    statuses: Vec<u16>,
    delay: Duration,
    requests: Mutex<Vec<Recorded>>,
    /// Requests seen so far, counted on arrival, so the script follows arrival order.
    arrived: Mutex<usize>,
    stop: AtomicBool,
}

impl HttpRecorder {
    /// A recorder that answers 200 to everything.
    pub(crate) fn start() -> HttpRecorder {
        HttpRecorder::with_statuses(&[200])
    }

    /// A recorder whose n-th request gets `statuses[n]`; the last status repeats
    /// (`&[500, 500, 200]`: two server errors, then success).
    pub(crate) fn with_statuses(statuses: &[u16]) -> HttpRecorder {
        HttpRecorder::launch(statuses, Duration::ZERO)
    }

    /// A recorder that waits `delay` before answering 200 (for timeouts).
    pub(crate) fn slow(delay: Duration) -> HttpRecorder {
        HttpRecorder::launch(&[200], delay)
    }

    fn launch(statuses: &[u16], delay: Duration) -> HttpRecorder {
        assert!(!statuses.is_empty(), "a recorder needs at least one status");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the HTTP recorder");
        let address = listener.local_addr().expect("recorder address");
        let shared = Arc::new(HttpShared {
            statuses: statuses.to_vec(),
            delay,
            requests: Mutex::new(Vec::new()),
            arrived: Mutex::new(0),
            stop: AtomicBool::new(false),
        });
        accept_until_stopped(listener, Arc::clone(&shared), |s| &s.stop, serve_http);
        HttpRecorder { address, shared }
    }

    /// `http://127.0.0.1:<port>`; append any path.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The requests received so far.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests have arrived (they are recorded before the answer)
    /// and returns them all; fails the test after the deadline.
    #[track_caller]
    pub(crate) fn wait_for(&self, n: usize) -> Vec<Recorded> {
        wait_for_count(
            n,
            || self.requests(),
            |requests| {
                format!(
                "the HTTP recorder at {} got {} request(s) within {DEADLINE:?}, expected {n}: {requests:#?}",
                self.url(),
                requests.len()
            )
            },
        )
    }
}

impl Drop for HttpRecorder {
    fn drop(&mut self) {
        stop_accepting(&self.shared.stop, self.address);
    }
}

/// Accepts connections on `listener` on a thread of its own, serving each on a thread of its
/// own with `serve`, until the flag `stop` picks out of `shared` is set.
fn accept_until_stopped<S: Send + Sync + 'static>(
    listener: TcpListener,
    shared: Arc<S>,
    stop: fn(&S) -> &AtomicBool,
    serve: fn(TcpStream, &S) -> std::io::Result<()>,
) {
    thread::spawn(move || {
        for stream in listener.incoming() {
            if stop(&shared).load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = stream else { continue };
            let connection = Arc::clone(&shared);
            thread::spawn(move || {
                // A client that hangs up mid-conversation is not a test failure.
                let _ = serve(stream, &connection);
            });
        }
    });
}

/// Sets `stop` and wakes the accept loop listening on `address` so it sees the flag.
fn stop_accepting(stop: &AtomicBool, address: SocketAddr) {
    stop.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect(address);
}

/// Polls `current` until it holds at least `n` items and returns them; after
/// [`DEADLINE`] fails the test with `describe(items)`.
#[track_caller]
fn wait_for_count<T>(
    n: usize,
    current: impl Fn() -> Vec<T>,
    describe: impl Fn(&[T]) -> String,
) -> Vec<T> {
    let mut last = Vec::new();
    let enough = poll_for(DEADLINE, || {
        let items = current();
        if items.len() >= n {
            return Some(items);
        }
        last = items;
        None
    });
    match enough {
        Some(items) => items,
        None => panic!("{}", describe(&last)),
    }
}

/// Reads one request, records it, answers and closes the connection.
fn serve_http(stream: TcpStream, shared: &HttpShared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(());
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            break;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let mut body = Vec::new();
    if headers
        .get("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = headers.get("content-length") {
        let mut buffer = vec![0; length.parse().unwrap_or(0)];
        reader.read_exact(&mut buffer)?;
        body = buffer;
    }
    let index = {
        let mut arrived = shared.arrived.lock().unwrap();
        *arrived += 1;
        *arrived - 1
    };
    let status = shared.statuses[index.min(shared.statuses.len() - 1)];
    let text = String::from_utf8_lossy(&body).into_owned();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    shared.requests.lock().unwrap().push(Recorded {
        method,
        path,
        headers,
        body,
        answered: status,
    });
    if !shared.delay.is_zero() {
        thread::sleep(shared.delay);
    }
    let answer = if (200..300).contains(&status) {
        "ok".to_owned()
    } else {
        format!("scripted status {status}")
    };
    let mut stream = reader.into_inner();
    write!(
        stream,
        "HTTP/1.1 {status} Scripted\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    )?;
    stream.flush()
}

/// One message an [`SmtpSink`] accepted.
#[derive(Debug, Clone)]
pub(crate) struct SmtpMessage {
    /// The `MAIL FROM` address (without angle brackets).
    pub(crate) from: String,
    /// The `RCPT TO` addresses, in order.
    pub(crate) recipients: Vec<String>,
    /// The message as sent after `DATA`, dot-unstuffed, CRLF line ends.
    pub(crate) data: String,
    /// The user name and password of the session's AUTH, if any.
    pub(crate) auth: Option<(String, String)>,
}

impl SmtpMessage {
    /// The value of the header `name` (unfolded), if present.
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or_default();
        let mut value: Option<String> = None;
        let mut matching = false;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if matching {
                    if let Some(value) = &mut value {
                        value.push(' ');
                        value.push_str(line.trim());
                    }
                }
                continue;
            }
            matching = false;
            if let Some((header, rest)) = line.split_once(':') {
                if header.eq_ignore_ascii_case(name) {
                    matching = true;
                    value = Some(rest.trim().to_owned());
                }
            }
        }
        value
    }

    /// The body: everything after the blank line that ends the headers.
    pub(crate) fn body(&self) -> &str {
        self.data
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body)
    }
}

/// An SMTP server on 127.0.0.1:0 (no TLS) that accepts and records messages.
pub(crate) struct SmtpSink {
    address: SocketAddr,
    shared: Arc<SmtpShared>,
}

struct SmtpShared {
    /// Credentials every session must authenticate with before `MAIL`, if set.
    required: Option<(String, String)>,
    /// How many `MAIL` commands still get a transient 451.
    transient_failures: Mutex<u32>,
    messages: Mutex<Vec<SmtpMessage>>,
    /// Every AUTH attempt (user, password, accepted), accepted or not.
    auth_attempts: Mutex<Vec<(String, String, bool)>>,
    stop: AtomicBool,
}

impl SmtpSink {
    /// A sink that accepts every message, with or without AUTH.
    pub(crate) fn start() -> SmtpSink {
        SmtpSink::launch(None, 0)
    }

    /// A sink that requires AUTH with `user` and `password` (535 for others, 530 for `MAIL`
    /// before AUTH).
    pub(crate) fn requiring(user: &str, password: &str) -> SmtpSink {
        SmtpSink::launch(Some((user.to_owned(), password.to_owned())), 0)
    }

    /// A sink whose first `n` `MAIL` commands get a transient `451` answer.
    pub(crate) fn failing_first(n: u32) -> SmtpSink {
        SmtpSink::launch(None, n)
    }

    fn launch(required: Option<(String, String)>, transient_failures: u32) -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the SMTP sink");
        let address = listener.local_addr().expect("sink address");
        let shared = Arc::new(SmtpShared {
            required,
            transient_failures: Mutex::new(transient_failures),
            messages: Mutex::new(Vec::new()),
            auth_attempts: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        accept_until_stopped(listener, Arc::clone(&shared), |s| &s.stop, serve_smtp);
        SmtpSink { address, shared }
    }

    /// The port to configure as the channel's `port` (host `127.0.0.1`, security `none`).
    pub(crate) fn port(&self) -> u16 {
        self.address.port()
    }

    /// The messages accepted so far.
    pub(crate) fn messages(&self) -> Vec<SmtpMessage> {
        self.shared.messages.lock().unwrap().clone()
    }

    /// Every AUTH attempt: user, password and whether it was accepted.
    pub(crate) fn auth_attempts(&self) -> Vec<(String, String, bool)> {
        self.shared.auth_attempts.lock().unwrap().clone()
    }

    /// Waits until at least `n` messages were accepted and returns them all; fails the test
    /// after the deadline.
    #[track_caller]
    pub(crate) fn wait_for(&self, n: usize) -> Vec<SmtpMessage> {
        wait_for_count(
            n,
            || self.messages(),
            |messages| {
                format!(
                "the SMTP sink on port {} accepted {} message(s) within {DEADLINE:?}, expected {n}: {messages:#?}",
                self.port(),
                messages.len()
            )
            },
        )
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        stop_accepting(&self.shared.stop, self.address);
    }
}

/// One SMTP session, until QUIT or the client hangs up.
fn serve_smtp(stream: TcpStream, shared: &SmtpShared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut reply = |text: &str| -> std::io::Result<()> {
        writer.write_all(text.as_bytes())?;
        writer.write_all(b"\r\n")?;
        writer.flush()
    };
    let read_line = |reader: &mut BufReader<TcpStream>| -> std::io::Result<Option<String>> {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(line.trim_end_matches(['\r', '\n']).to_owned()))
    };

    reply("220 sink.test ESMTP test sink")?;
    let mut auth: Option<(String, String)> = None;
    let mut authenticated = false;
    let mut from: Option<String> = None;
    let mut recipients: Vec<String> = Vec::new();
    while let Some(line) = read_line(&mut reader)? {
        let (verb, argument) = match line.split_once(' ') {
            Some((verb, argument)) => (verb.to_ascii_uppercase(), argument.trim().to_owned()),
            None => (line.to_ascii_uppercase(), String::new()),
        };
        match verb.as_str() {
            "EHLO" => {
                from = None;
                recipients.clear();
                reply("250-sink.test greets you")?;
                reply("250-8BITMIME")?;
                reply("250-AUTH PLAIN LOGIN")?;
                reply("250 OK")?;
            }
            "HELO" => {
                from = None;
                recipients.clear();
                reply("250 sink.test")?;
            }
            "AUTH" => {
                let mut words = argument.split_whitespace();
                let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
                let initial = words.next().map(str::to_owned);
                let credentials = match mechanism.as_str() {
                    "PLAIN" => {
                        let encoded = match initial {
                            Some(encoded) => encoded,
                            None => {
                                reply("334 ")?;
                                read_line(&mut reader)?.unwrap_or_default()
                            }
                        };
                        let decoded = base64_decode(&encoded).unwrap_or_default();
                        let decoded = String::from_utf8_lossy(&decoded).into_owned();
                        let mut parts = decoded.split('\0').skip(1);
                        match (parts.next(), parts.next()) {
                            (Some(user), Some(password)) => {
                                Some((user.to_owned(), password.to_owned()))
                            }
                            _ => None,
                        }
                    }
                    "LOGIN" => {
                        let user = match initial {
                            Some(encoded) => encoded,
                            None => {
                                reply("334 VXNlcm5hbWU6")?;
                                read_line(&mut reader)?.unwrap_or_default()
                            }
                        };
                        reply("334 UGFzc3dvcmQ6")?;
                        let password = read_line(&mut reader)?.unwrap_or_default();
                        let decode = |text: &str| {
                            String::from_utf8_lossy(&base64_decode(text).unwrap_or_default())
                                .into_owned()
                        };
                        Some((decode(&user), decode(&password)))
                    }
                    _ => {
                        reply("504 5.5.4 unrecognized authentication type")?;
                        continue;
                    }
                };
                let Some((user, password)) = credentials else {
                    reply("501 5.5.2 cannot decode the credentials")?;
                    continue;
                };
                let accepted = shared
                    .required
                    .as_ref()
                    .is_none_or(|required| *required == (user.clone(), password.clone()));
                shared.auth_attempts.lock().unwrap().push((
                    user.clone(),
                    password.clone(),
                    accepted,
                ));
                if accepted {
                    authenticated = true;
                    auth = Some((user, password));
                    reply("235 2.7.0 authentication successful")?;
                } else {
                    reply("535 5.7.8 authentication credentials invalid")?;
                }
            }
            "MAIL" => {
                if shared.required.is_some() && !authenticated {
                    reply("530 5.7.0 authentication required")?;
                    continue;
                }
                {
                    let mut failures = shared.transient_failures.lock().unwrap();
                    if *failures > 0 {
                        *failures -= 1;
                        reply("451 4.3.0 try again later")?;
                        continue;
                    }
                }
                match address(&argument, "FROM:") {
                    Some(address) => {
                        from = Some(address);
                        recipients.clear();
                        reply("250 2.1.0 OK")?;
                    }
                    None => reply("501 5.5.4 expected MAIL FROM:<address>")?,
                }
            }
            "RCPT" => {
                if from.is_none() {
                    reply("503 5.5.1 MAIL first")?;
                    continue;
                }
                match address(&argument, "TO:") {
                    Some(address) => {
                        recipients.push(address);
                        reply("250 2.1.5 OK")?;
                    }
                    None => reply("501 5.5.4 expected RCPT TO:<address>")?,
                }
            }
            "DATA" => {
                if recipients.is_empty() {
                    reply("503 5.5.1 RCPT first")?;
                    continue;
                }
                reply("354 end data with <CR><LF>.<CR><LF>")?;
                let mut data = String::new();
                loop {
                    let Some(line) = read_line(&mut reader)? else {
                        return Ok(());
                    };
                    if line == "." {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                    data.push_str("\r\n");
                }
                shared.messages.lock().unwrap().push(SmtpMessage {
                    from: from.take().unwrap_or_default(),
                    recipients: std::mem::take(&mut recipients),
                    data,
                    auth: auth.clone(),
                });
                reply("250 2.0.0 OK queued")?;
            }
            "RSET" => {
                from = None;
                recipients.clear();
                reply("250 2.0.0 OK")?;
            }
            "NOOP" => reply("250 2.0.0 OK")?,
            "STARTTLS" => reply("454 4.7.0 TLS not available")?,
            "QUIT" => {
                reply("221 2.0.0 bye")?;
                return Ok(());
            }
            _ => reply("502 5.5.2 command not recognized")?,
        }
    }
    Ok(())
}

/// The address in `FROM:<a@b> PARAMS` (after `prefix`), without the brackets.
fn address(argument: &str, prefix: &str) -> Option<String> {
    let head = argument.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = argument[prefix.len()..].trim_start();
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some(inner[..end].to_owned())
}

/// Standard base64 (with or without padding); `None` for other characters.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.trim().bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

#[test]
fn base64_decodes_auth_payloads() {
    assert_eq!(
        base64_decode("AHVzZXIAc2VjcmV0").unwrap(),
        b"\0user\0secret".to_vec()
    );
    assert_eq!(
        base64_decode("VXNlcm5hbWU6").unwrap(),
        b"Username:".to_vec()
    );
    assert_eq!(base64_decode("YQ==").unwrap(), b"a".to_vec());
    assert!(base64_decode("not base64!").is_none());
}

//! Repairs the HTTP/2 `:authority` that etcd's Go client 3.4 sends on connections it dials to
//! one endpoint (`etcdctl --endpoints http://host:port endpoint status`, `endpoint hashkv`,
//! `move-leader`, logins): the whole URL, `http://host:port`. Go's gRPC server accepts it;
//! Rust's `h2` refuses the request as malformed. This filter sits between the socket and the
//! HTTP/2 server and rewrites such values to `host:port`, so those clients work unchanged.
//!
//! # How
//! The client's byte stream is parsed into frames. Every request header block (a HEADERS frame
//! and its CONTINUATION frames) is HPACK-decoded with a decoder that follows the client's
//! dynamic table, repaired, and re-encoded with literal representations *without indexing*:
//! the server's HPACK table then never changes, so it cannot diverge from what the client
//! believes it holds (the client's table is mirrored by our decoder, not by the server).
//! All other frames pass through byte for byte; the server-to-client direction is untouched.
//!
//! # Malformed input
//! Every byte here comes from the client, so nothing it sends may panic this filter, make it
//! hang or make it buffer without bound. The HPACK decoder returns errors on malformed blocks;
//! the client may not grow its dynamic table past the SETTINGS_HEADER_TABLE_SIZE the server
//! keeps (RFC 7541 §4.2); frames, header blocks and decoded header lists have size limits; an
//! `:authority` that is neither valid (by the parser h2 itself uses) nor a URL holding a valid
//! one is refused. Each of these ends the connection with an `InvalidData` error saying what
//! was wrong, which every later read repeats.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::uri::Authority;
use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer must accept (SETTINGS_MAX_FRAME_SIZE's initial value).
const MAX_FRAME: usize = 16_384;
/// Largest frame or header block accepted: well above anything a client sends.
const MAX_BUFFERED: usize = 1 << 24;
/// The largest HPACK dynamic table a client may use: SETTINGS_HEADER_TABLE_SIZE's initial
/// value, which the server keeps (it advertises no other).
const HEADER_TABLE_SIZE: usize = 4096;
/// Largest decoded header list (sized as in RFC 9113 §6.5.2): what the gRPC server itself
/// accepts per request ([`super::MAX_HEADER_LIST_BYTES`]). A few indexed octets can name a
/// table entry of kilobytes, so the decoded list, not the block, bounds the memory.
const MAX_HEADER_LIST: usize = super::MAX_HEADER_LIST_BYTES as usize;
/// How much of a refused value an error message quotes.
const QUOTED: usize = 64;

/// A client connection whose request headers have their `:authority` repaired.
pub struct RepairAuthority<S> {
    inner: S,
    /// Bytes read from the client, not yet processed.
    raw: Vec<u8>,
    /// Processed bytes, ready for the server.
    ready: Vec<u8>,
    /// How much of `ready` the server has taken.
    taken: usize,
    preface_seen: bool,
    /// A header block waiting for its CONTINUATION frames: stream, flags, priority, fragments.
    pending: Option<Pending>,
    decoder: Decoder<'static>,
    eof: bool,
    /// Why the connection was refused: every read after the first error fails the same way.
    failed: Option<String>,
}

struct Pending {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// At most [`QUOTED`] bytes of `value`, as text, for an error message.
fn quoted(value: &[u8]) -> String {
    let shown = String::from_utf8_lossy(&value[..value.len().min(QUOTED)]);
    if value.len() > QUOTED {
        format!("{shown:?}...")
    } else {
        format!("{shown:?}")
    }
}

/// The `:authority` to forward for the client's `value`: the value itself when it is valid (by
/// the parser h2 judges it with), else the authority of the URL etcd's Go client 3.4 sends
/// (`http://host:port`, perhaps with a path). Anything else is an error (and the header is
/// dropped).
fn forwarded_authority(value: &[u8]) -> io::Result<Vec<u8>> {
    if Authority::try_from(value).is_ok() {
        return Ok(value.to_vec());
    }
    let refused = |why: &dyn std::fmt::Display| {
        invalid(format!("malformed :authority {}: {why}", quoted(value)))
    };
    let url = value
        .strip_prefix(b"http://")
        .or_else(|| value.strip_prefix(b"https://"))
        .ok_or_else(|| refused(&"neither an authority nor an http(s) URL"))?;
    let authority = url.split(|&b| b == b'/').next().unwrap_or_default();
    Authority::try_from(authority).map_err(|e| refused(&e))?;
    Ok(authority.to_vec())
}

/// An HPACK integer with an `prefix`-bit prefix, the first byte's high bits set to `flags`.
fn put_integer(out: &mut Vec<u8>, flags: u8, prefix: u8, value: usize) {
    let mut encoded = loona_hpack::encoder::encode_integer(value, prefix);
    if let Some(first) = encoded.first_mut() {
        *first |= flags;
    }
    out.extend_from_slice(&encoded);
}

/// A header block of literal fields without indexing (RFC 7541 §6.2.2), no Huffman coding.
fn encode_block(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        put_integer(&mut out, 0x00, 7, name.len());
        out.extend_from_slice(name);
        put_integer(&mut out, 0x00, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

fn push_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

impl<S> RepairAuthority<S> {
    /// Filters the client connection `inner`.
    pub fn new(inner: S) -> Self {
        let mut decoder = Decoder::new();
        // A size update above this is an error, so the table never outgrows it.
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        RepairAuthority {
            inner,
            raw: Vec::new(),
            ready: Vec::new(),
            taken: 0,
            preface_seen: false,
            pending: None,
            decoder,
            eof: false,
            failed: None,
        }
    }

    /// Takes `bytes` read from the client and processes what is complete.
    fn ingest(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.raw.extend_from_slice(bytes);
        if self.raw.len() > MAX_BUFFERED + FRAME_HEADER {
            return Err(invalid("HTTP/2 frame too large"));
        }
        self.process()
    }

    /// Moves every complete unit of `raw` into `ready`.
    fn process(&mut self) -> io::Result<()> {
        if !self.preface_seen {
            if self.raw.len() < PREFACE.len() {
                return Ok(());
            }
            if &self.raw[..PREFACE.len()] != PREFACE {
                // The client API is HTTP/2 with prior knowledge only (gRPC without TLS).
                return Err(invalid("not an HTTP/2 client connection preface"));
            }
            self.ready.extend_from_slice(PREFACE);
            self.raw.drain(..PREFACE.len());
            self.preface_seen = true;
        }
        let mut at = 0;
        while self.raw.len() - at >= FRAME_HEADER {
            let head = &self.raw[at..at + FRAME_HEADER];
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            if len > MAX_BUFFERED {
                return Err(invalid(format!("HTTP/2 frame of {len} bytes")));
            }
            if self.raw.len() - at < FRAME_HEADER + len {
                break;
            }
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let frame = at..at + FRAME_HEADER + len;
            let payload = at + FRAME_HEADER..at + FRAME_HEADER + len;
            match kind {
                HEADERS => {
                    let payload = self.raw[payload].to_vec();
                    self.start_block(stream, flags, &payload)?;
                }
                CONTINUATION => {
                    let payload = self.raw[payload].to_vec();
                    self.continue_block(stream, flags, &payload)?;
                }
                _ if self.pending.is_some() => {
                    return Err(invalid("a frame interrupted a header block"));
                }
                _ => self.ready.extend_from_slice(&self.raw[frame]),
            }
            at += FRAME_HEADER + len;
        }
        self.raw.drain(..at);
        Ok(())
    }

    fn start_block(&mut self, stream: u32, flags: u8, payload: &[u8]) -> io::Result<()> {
        if self.pending.is_some() {
            return Err(invalid("HEADERS inside an unfinished header block"));
        }
        let mut body = payload;
        let mut padding = 0;
        if flags & PADDED != 0 {
            let (&pad, rest) = body
                .split_first()
                .ok_or_else(|| invalid("PADDED HEADERS without a pad length"))?;
            padding = usize::from(pad);
            body = rest;
        }
        let priority = if flags & PRIORITY != 0 {
            if body.len() < 5 {
                return Err(invalid("HEADERS too short for its priority"));
            }
            let mut p = [0u8; 5];
            p.copy_from_slice(&body[..5]);
            body = &body[5..];
            Some(p)
        } else {
            None
        };
        if padding > body.len() {
            return Err(invalid("HEADERS padding longer than the frame"));
        }
        let fragment = &body[..body.len() - padding];
        self.pending = Some(Pending {
            stream,
            flags,
            priority,
            block: fragment.to_vec(),
        });
        if flags & END_HEADERS != 0 {
            self.finish_block()?;
        }
        Ok(())
    }

    fn continue_block(&mut self, stream: u32, flags: u8, payload: &[u8]) -> io::Result<()> {
        let pending = self
            .pending
            .as_mut()
            .ok_or_else(|| invalid("CONTINUATION without HEADERS"))?;
        if pending.stream != stream {
            return Err(invalid("CONTINUATION on another stream"));
        }
        if pending.block.len() + payload.len() > MAX_BUFFERED {
            return Err(invalid("header block too large"));
        }
        pending.block.extend_from_slice(payload);
        if flags & END_HEADERS != 0 {
            self.finish_block()?;
        }
        Ok(())
    }

    /// The header list of the request on `stream` in `block`, its `:authority` repaired.
    fn decode(&mut self, stream: u32, block: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut headers = Vec::new();
        let mut size = 0usize;
        // The decoder cannot be stopped from the callback: past the limit it runs on through
        // the rest of the block (itself bounded) while nothing more is kept.
        self.decoder
            .decode_with_cb(block, |name, value| {
                size = size.saturating_add(name.len() + value.len() + 32);
                if size <= MAX_HEADER_LIST {
                    headers.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| invalid(format!("HPACK: request headers on stream {stream}: {e}")))?;
        if size > MAX_HEADER_LIST {
            return Err(invalid(format!(
                "request headers on stream {stream}: a header list of more than \
                 {MAX_HEADER_LIST} bytes"
            )));
        }
        // A value that is neither an authority nor a URL with one (older gRPC clients send
        // their dial target, e.g. `#initially=[…]`) is dropped, as Go's server ignores it:
        // the request goes on without one instead of the connection failing.
        headers.retain_mut(|(name, value)| {
            if name.as_slice() != b":authority" {
                return true;
            }
            match forwarded_authority(value) {
                Ok(repaired) => {
                    *value = repaired;
                    true
                }
                Err(e) => {
                    tracing::debug!(error = %e, "dropping an unusable :authority");
                    false
                }
            }
        });
        Ok(headers)
    }

    /// Decodes the pending block, repairs `:authority`, and emits it re-encoded.
    fn finish_block(&mut self) -> io::Result<()> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let headers = self.decode(pending.stream, &pending.block)?;
        let block = encode_block(&headers);
        let mut flags = (pending.flags & END_STREAM) | END_HEADERS;
        let mut first = Vec::new();
        if let Some(priority) = pending.priority {
            flags |= PRIORITY;
            first.extend_from_slice(&priority);
        }
        // Re-encoded literals take less than the 32 octets per field RFC 9113 counts, so a
        // list within MAX_HEADER_LIST always fits one frame.
        if first.len() + block.len() > MAX_FRAME {
            return Err(invalid(format!(
                "request headers on stream {}: re-encoded block exceeds one frame",
                pending.stream
            )));
        }
        first.extend_from_slice(&block);
        push_frame(&mut self.ready, HEADERS, flags, pending.stream, &first);
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RepairAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(why) = &this.failed {
            return Poll::Ready(Err(invalid(why.clone())));
        }
        loop {
            if this.taken < this.ready.len() {
                let n = (this.ready.len() - this.taken).min(buf.remaining());
                buf.put_slice(&this.ready[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.ready.len() {
                    this.ready.clear();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // Whatever is left is an incomplete frame: hand it over for the server to judge.
                if !this.raw.is_empty() {
                    this.ready = std::mem::take(&mut this.raw);
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let filled = read.filled();
                    if filled.is_empty() {
                        this.eof = true;
                        continue;
                    }
                    if let Err(e) = this.ingest(filled) {
                        this.failed = Some(e.to_string());
                        return Poll::Ready(Err(e));
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RepairAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for RepairAuthority<crate::tls::Conn> {
    type ConnectInfo = crate::tls::ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A client stream: preface, SETTINGS, then `blocks` as HEADERS frames on streams 1, 3, ...
    /// (encoded with indexing as loona-hpack's encoder does), each followed by a
    /// DATA frame.
    fn client_stream(blocks: &[Vec<(&[u8], &[u8])>]) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut encoder = loona_hpack::Encoder::new();
        let mut out = PREFACE.to_vec();
        push_frame(&mut out, 0x4, 0, 0, &[]);
        let mut data_frames = Vec::new();
        for (i, headers) in blocks.iter().enumerate() {
            let stream = 2 * i as u32 + 1;
            let block = encoder.encode(headers.iter().copied());
            // Split the block over HEADERS + CONTINUATION to exercise reassembly.
            let (a, b) = block.split_at(block.len() / 2);
            push_frame(&mut out, HEADERS, 0, stream, a);
            push_frame(&mut out, CONTINUATION, END_HEADERS, stream, b);
            let mut data = Vec::new();
            push_frame(
                &mut data,
                0x0,
                END_STREAM,
                stream,
                format!("body{i}").as_bytes(),
            );
            out.extend_from_slice(&data);
            data_frames.push(data);
        }
        (out, data_frames)
    }

    /// Reads everything the filter yields for `input`, fed in chunks of `chunk` bytes.
    async fn filtered(input: Vec<u8>, chunk: usize) -> io::Result<Vec<u8>> {
        filtered_in(input, &[chunk], 64).await
    }

    /// Reads everything the filter yields for `input`, written in pieces of the sizes in
    /// `chunks` (in turn, over and over) through a pipe holding `capacity` bytes.
    async fn filtered_in(input: Vec<u8>, chunks: &[usize], capacity: usize) -> io::Result<Vec<u8>> {
        let (mut client, server) = tokio::io::duplex(capacity);
        let chunks = chunks.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut rest = &input[..];
            for &chunk in chunks.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (piece, after) = rest.split_at(chunk.clamp(1, rest.len()));
                client.write_all(piece).await?;
                rest = after;
            }
            client.shutdown().await
        });
        let mut out = Vec::new();
        RepairAuthority::new(server).read_to_end(&mut out).await?;
        writer.await.map_err(io::Error::other)??;
        Ok(out)
    }

    /// Splits a filtered stream into its frames (after the preface).
    fn frames(stream: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert_eq!(&stream[..PREFACE.len()], PREFACE);
        let mut rest = &stream[PREFACE.len()..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            out.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        out
    }

    #[tokio::test]
    async fn url_authorities_are_repaired_and_everything_else_kept() {
        let bad: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/etcdserverpb.Maintenance/Status"),
            (b":authority", b"http://127.0.0.1:2379"),
            (b"content-type", b"application/grpc"),
        ];
        let good: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/etcdserverpb.KV/Range"),
            (b":authority", b"127.0.0.1:2379"),
            (b"content-type", b"application/grpc"),
            (b"token", b"abc.1"),
        ];
        // The second and third blocks reuse the client's dynamic table entries.
        let (input, data) = client_stream(&[bad.clone(), good.clone(), bad.clone()]);
        for chunk in [1, 3, 7, 4096] {
            let out = filtered(input.clone(), chunk).await.expect("filtered");
            let frames = frames(&out);
            let mut decoder = Decoder::new();
            let mut blocks = Vec::new();
            let mut datas = Vec::new();
            for (kind, flags, stream, payload) in &frames {
                match *kind {
                    HEADERS => {
                        assert_ne!(flags & END_HEADERS, 0, "one frame per block");
                        blocks.push(decoder.decode(payload).expect("decodes"));
                    }
                    0x0 => {
                        let mut frame = Vec::new();
                        push_frame(&mut frame, 0x0, *flags, *stream, payload);
                        datas.push(frame);
                    }
                    _ => {}
                }
            }
            assert_eq!(datas, data, "DATA frames pass through unchanged");
            let expect = |h: &[(&[u8], &[u8])]| -> Vec<(Vec<u8>, Vec<u8>)> {
                h.iter()
                    .map(|(n, v)| {
                        let v: &[u8] = if *n == b":authority" {
                            b"127.0.0.1:2379"
                        } else {
                            v
                        };
                        (n.to_vec(), v.to_vec())
                    })
                    .collect()
            };
            assert_eq!(blocks, vec![expect(&bad), expect(&good), expect(&bad)]);
        }
    }

    /// A client stream whose one request carries `block` as its header block.
    fn stream_with_block(block: &[u8]) -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        push_frame(&mut out, 0x4, 0, 0, &[]);
        push_frame(&mut out, HEADERS, END_HEADERS | END_STREAM, 1, block);
        out
    }

    /// Asserts that the filter ends the connection over `block` with an InvalidData error
    /// whose message contains `says`.
    async fn refused(block: &[u8], says: &str) {
        let err = filtered(stream_with_block(block), 4096)
            .await
            .expect_err("malformed input is refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let message = err.to_string().to_lowercase();
        assert!(message.contains(says), "{err:?} should say {says:?}");
    }

    #[tokio::test]
    async fn a_block_cut_off_in_a_table_size_update_is_refused() {
        // `001` and a full 5-bit prefix: at least one continuation octet must follow.
        refused(&[0x3f], "not enough octets").await;
        refused(&[0x82, 0x3f, 0xe1], "not enough octets").await;
    }

    #[tokio::test]
    async fn a_block_cut_off_in_a_literal_is_refused() {
        // A literal without indexing, new name of 5 octets, of which 1 arrived.
        refused(&[0x00, 0x05, b'a'], "not enough octets").await;
        // The name is complete, the value's length is missing.
        refused(&[0x00, 0x01, b'a'], "not enough octets").await;
        // An indexed name (`:authority`), the value's length integer cut off.
        refused(&[0x01, 0x7f], "not enough octets").await;
    }

    #[tokio::test]
    async fn an_index_out_of_range_is_refused() {
        // 61 static entries, an empty dynamic table: 62 is past the end, 0 is never valid.
        refused(&[0x80 | 62], "index").await;
        refused(&[0x80], "index").await;
        // A literal whose name refers to a missing entry.
        refused(&[0x0f, 0x40, 0x01, b'x'], "index").await;
    }

    #[tokio::test]
    async fn an_integer_longer_than_the_decoder_allows_is_refused() {
        refused(&[0x3f, 0xff, 0xff, 0xff, 0xff, 0x0f], "too many octets").await;
    }

    #[tokio::test]
    async fn a_table_larger_than_the_server_allows_is_refused() {
        // A size update to 4097 octets, one more than SETTINGS_HEADER_TABLE_SIZE's 4096.
        let mut block = Vec::new();
        put_integer(&mut block, 0x20, 5, HEADER_TABLE_SIZE + 1);
        block.push(0x82);
        refused(&block, "table size").await;
    }

    #[tokio::test]
    async fn a_header_list_that_expands_past_the_limit_is_refused() {
        // One 4000-octet entry in the dynamic table, then named by one octet 300 times: a
        // block of a few kilobytes that decodes to more than a megabyte.
        let mut block = vec![0x40];
        put_integer(&mut block, 0x00, 7, 1);
        block.push(b'x');
        put_integer(&mut block, 0x00, 7, 4000);
        block.extend(std::iter::repeat_n(b'v', 4000));
        block.extend(std::iter::repeat_n(0x80 | 62, 300));
        refused(&block, "header list of more than").await;
    }

    #[tokio::test]
    async fn a_table_size_update_within_the_limit_is_followed() {
        let mut block = Vec::new();
        put_integer(&mut block, 0x20, 5, HEADER_TABLE_SIZE);
        block.extend_from_slice(&[0x83, 0x86, 0x84]);
        let out = filtered(stream_with_block(&block), 4096)
            .await
            .expect("filtered");
        let frames = frames(&out);
        let decoded = Decoder::new().decode(&frames[1].3).expect("decodes");
        assert_eq!(decoded.len(), 3, "the size update itself is not forwarded");
    }

    #[tokio::test]
    async fn an_authority_that_cannot_be_repaired_is_dropped_and_the_request_goes_on() {
        for value in [
            &b"http://"[..],
            b"#initially=[http://x]",
            b"a b:1",
            b"http://x y/",
        ] {
            let mut block = vec![0x83, 0x86, 0x84];
            block.push(0x01);
            put_integer(&mut block, 0x00, 7, value.len());
            block.extend_from_slice(value);
            let out = filtered(stream_with_block(&block), 4096)
                .await
                .expect("the connection goes on");
            let frames = frames(&out);
            let decoded = Decoder::new().decode(&frames[1].3).expect("decodes");
            assert!(
                decoded
                    .iter()
                    .all(|(name, _)| name.as_slice() != b":authority"),
                "{}",
                quoted(value)
            );
            assert_eq!(decoded.len(), 3, "the other headers are kept");
        }
    }

    #[tokio::test]
    async fn after_an_error_every_read_fails() {
        let (mut client, server) = tokio::io::duplex(4096);
        use tokio::io::AsyncWriteExt;
        client
            .write_all(&stream_with_block(&[0x3f]))
            .await
            .expect("written");
        let mut filter = RepairAuthority::new(server);
        let mut buf = [0u8; 1024];
        let first = filter.read(&mut buf).await;
        // The preface may come first; the error follows, and stays.
        let first = match first {
            Ok(_) => filter.read(&mut buf).await,
            Err(e) => Err(e),
        };
        assert_eq!(
            first.expect_err("refused").kind(),
            io::ErrorKind::InvalidData
        );
        let again = filter.read(&mut buf).await.expect_err("still refused");
        assert_eq!(again.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn authorities_are_judged_as_h2_does() {
        let forwarded = |v: &[u8]| forwarded_authority(v).ok();
        for valid in [
            &b"127.0.0.1:2379"[..],
            b"example.com",
            b"[::1]:2379",
            b"u@h:1",
        ] {
            assert_eq!(forwarded(valid).as_deref(), Some(valid));
        }
        assert_eq!(
            forwarded(b"http://127.0.0.1:2379").as_deref(),
            Some(&b"127.0.0.1:2379"[..])
        );
        assert_eq!(
            forwarded(b"https://node-1.mend:2379/").as_deref(),
            Some(&b"node-1.mend:2379"[..])
        );
        for garbage in [
            &b""[..],
            b"http://",
            b"#initially=[http://x]",
            b"h\xffst:1",
            b"x:y:z",
        ] {
            assert_eq!(forwarded(garbage), None, "{}", quoted(garbage));
        }
    }

    #[test]
    fn long_values_are_quoted_shortened() {
        let long = vec![b'a'; 1000];
        let err = forwarded_authority(&[b"#", &long[..]].concat()).expect_err("refused");
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[tokio::test]
    async fn a_stream_that_is_not_http2_is_refused() {
        let err = filtered(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 64)
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_header_list_within_the_servers_limit_passes_and_a_larger_one_does_not() {
        let headers = |size: usize| vec![b'x'; size];
        let (big, small) = (headers(40_000), headers(15_000));
        for (value, passes) in [(&small, true), (&big, false)] {
            let list: Vec<(&[u8], &[u8])> = vec![
                (b":method", b"POST"),
                (b":authority", b"http://127.0.0.1:1"),
                (b"big", value),
            ];
            let (input, _) = client_stream(&[list]);
            let result = filtered(input, 4096).await;
            if !passes {
                let err = result.expect_err("a list over the limit is refused");
                assert!(
                    err.to_string().contains("header list of more than"),
                    "{err}"
                );
                continue;
            }
            let out = result.expect("filtered");
            let frames = frames(&out);
            let block: Vec<u8> = frames
                .iter()
                .filter(|f| f.0 == HEADERS || f.0 == CONTINUATION)
                .flat_map(|f| f.3.clone())
                .collect();
            assert!(frames.iter().all(|f| f.3.len() <= MAX_FRAME));
            let decoded = Decoder::new().decode(&block).expect("decodes");
            assert_eq!(
                decoded[1],
                (b":authority".to_vec(), b"127.0.0.1:1".to_vec())
            );
            assert_eq!(decoded[2].1.len(), 15_000);
        }
    }

    /// Hostile client streams: valid request sequences, the same damaged, and arbitrary
    /// frames and bytes, fed in arbitrary pieces.
    mod fuzz {
        use std::time::Duration;

        use proptest::collection::vec;
        use proptest::prelude::*;
        use proptest::sample::Index;

        use super::*;
        use crate::fuzzing::{self, config};

        /// A header list.
        type Headers = Vec<(Vec<u8>, Vec<u8>)>;

        /// What a stream is given to finish in: far more than any case takes, so running out
        /// means the filter hangs.
        const DEADLINE: Duration = Duration::from_secs(30);

        /// The most the filter may emit for `input` bytes: every frame (at least
        /// FRAME_HEADER bytes of input) passed on unchanged or, for a header block,
        /// re-encoded into one frame of at most MAX_FRAME.
        fn output_bound(input: usize) -> usize {
            input + (input / FRAME_HEADER + 1) * (FRAME_HEADER + MAX_FRAME)
        }

        /// An `:authority` of every kind the filter meets: valid, a URL, garbage, any bytes.
        fn authority() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                Just(b"127.0.0.1:2379".to_vec()),
                Just(b"http://127.0.0.1:2379".to_vec()),
                Just(b"https://node-1.mend:2379/a/b".to_vec()),
                Just(b"#initially=[http://x]".to_vec()),
                Just(Vec::new()),
                "[a-z0-9.:/@#\\[\\]-]{0,30}".prop_map(String::into_bytes),
                fuzzing::bytes(40),
            ]
        }

        /// A request's header list: pseudo-headers, any number of `:authority` values, other
        /// headers, now and then one large enough to take the list past the limit.
        fn header_list() -> impl Strategy<Value = Headers> {
            let value = prop_oneof![
                9 => fuzzing::bytes(64),
                1 => (0..20_000usize).prop_map(|n| vec![b'v'; n]),
            ];
            (
                vec(authority(), 0..3),
                vec(("[a-z-]{1,12}".prop_map(String::into_bytes), value), 0..4),
            )
                .prop_map(|(authorities, others)| {
                    let mut list: Headers = vec![
                        (b":method".to_vec(), b"POST".to_vec()),
                        (b":scheme".to_vec(), b"http".to_vec()),
                        (b":path".to_vec(), b"/etcdserverpb.KV/Range".to_vec()),
                    ];
                    list.extend(authorities.into_iter().map(|a| (b":authority".to_vec(), a)));
                    list.extend(others);
                    list
                })
        }

        /// How one request's HEADERS frame is sent: where its block is cut into CONTINUATION
        /// frames, whether it ends the stream, its priority, its padding.
        #[derive(Clone, Debug)]
        struct Framing {
            cuts: Vec<Index>,
            end_stream: bool,
            priority: Option<[u8; 5]>,
            padding: Option<Vec<u8>>,
        }

        fn framing() -> impl Strategy<Value = Framing> {
            (
                vec(any::<Index>(), 0..3),
                any::<bool>(),
                proptest::option::of(any::<[u8; 5]>()),
                proptest::option::of(fuzzing::bytes(12)),
            )
                .prop_map(|(cuts, end_stream, priority, padding)| Framing {
                    cuts,
                    end_stream,
                    priority,
                    padding,
                })
        }

        /// A frame the filter passes through: DATA, SETTINGS, PING, WINDOW_UPDATE, RST_STREAM
        /// or a type HTTP/2 does not define.
        fn other_frame() -> impl Strategy<Value = Vec<u8>> {
            let kind = prop_oneof![
                Just(0x0),
                Just(0x3),
                Just(0x4),
                Just(0x6),
                Just(0x8),
                0xau8..
            ];
            (kind, any::<u8>(), any::<u32>(), fuzzing::bytes(32)).prop_map(
                |(kind, flags, stream, payload)| {
                    let mut frame = Vec::new();
                    push_frame(&mut frame, kind, flags, stream, &payload);
                    frame
                },
            )
        }

        /// One request: its headers, how they are framed, and the frames that follow it.
        type Request = (Headers, Framing, Vec<Vec<u8>>);

        fn requests() -> impl Strategy<Value = Vec<Request>> {
            vec((header_list(), framing(), vec(other_frame(), 0..3)), 0..5)
        }

        /// The client's stream for `requests`: preface, SETTINGS, then each request's header
        /// block (HPACK-encoded with one encoder, so later blocks refer to its dynamic table)
        /// and the frames after it.
        fn stream(requests: &[Request]) -> Vec<u8> {
            let mut encoder = loona_hpack::Encoder::new();
            let mut out = PREFACE.to_vec();
            push_frame(&mut out, 0x4, 0, 0, &[]);
            for (i, (headers, framing, after)) in requests.iter().enumerate() {
                let stream = 2 * i as u32 + 1;
                let block = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
                let mut cuts: Vec<usize> = framing
                    .cuts
                    .iter()
                    .map(|c| c.index(block.len() + 1))
                    .collect();
                cuts.sort_unstable();
                cuts.push(block.len());
                let mut flags = if framing.end_stream { END_STREAM } else { 0 };
                let mut first = Vec::new();
                if let Some(padding) = &framing.padding {
                    flags |= PADDED;
                    first.push(padding.len() as u8);
                }
                if let Some(priority) = framing.priority {
                    flags |= PRIORITY;
                    first.extend_from_slice(&priority);
                }
                first.extend_from_slice(&block[..cuts[0]]);
                first.extend(framing.padding.iter().flatten());
                if cuts.len() == 1 {
                    flags |= END_HEADERS;
                }
                push_frame(&mut out, HEADERS, flags, stream, &first);
                for (i, pair) in cuts.windows(2).enumerate() {
                    let last = i + 2 == cuts.len();
                    let flags = if last { END_HEADERS } else { 0 };
                    push_frame(
                        &mut out,
                        CONTINUATION,
                        flags,
                        stream,
                        &block[pair[0]..pair[1]],
                    );
                }
                out.extend(after.iter().flatten());
            }
            out
        }

        /// `headers` as the filter forwards them: each `:authority` repaired or dropped.
        fn forwarded(headers: &Headers) -> Headers {
            headers
                .iter()
                .filter_map(|(name, value)| {
                    if name.as_slice() != b":authority" {
                        return Some((name.clone(), value.clone()));
                    }
                    forwarded_authority(value).ok().map(|v| (name.clone(), v))
                })
                .collect()
        }

        /// Whether `headers` decode to more than the server accepts (sized as RFC 9113 does).
        fn too_large(headers: &Headers) -> bool {
            let size: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
            size > MAX_HEADER_LIST
        }

        /// How the pieces are written: their sizes, taken in turn, and the pipe's capacity.
        fn chunking() -> impl Strategy<Value = (Vec<usize>, usize)> {
            let size = prop_oneof![1..8usize, 1..512usize, 1..20_000usize];
            (vec(size, 1..6), 1..4096usize)
        }

        /// Runs the filter over `input` on a runtime of its own; a hang fails the case.
        fn run(input: Vec<u8>, chunks: &[usize], capacity: usize) -> io::Result<Vec<u8>> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()?;
            runtime.block_on(async {
                tokio::time::timeout(DEADLINE, filtered_in(input, chunks, capacity))
                    .await
                    .unwrap_or_else(|_| panic!("the filter hung"))
            })
        }

        /// What holds for whatever the filter makes of any input: it finishes, an error is
        /// InvalidData, the output is bounded, and every header block leaves as one HEADERS
        /// frame no larger than a frame may be.
        fn passed_or_refused(
            input: Vec<u8>,
            chunks: &[usize],
            capacity: usize,
        ) -> Result<(), TestCaseError> {
            let len = input.len();
            let out = match run(input, chunks, capacity) {
                Ok(out) => out,
                Err(e) => {
                    prop_assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{}", e);
                    return Ok(());
                }
            };
            prop_assert!(
                out.len() <= output_bound(len),
                "{} bytes out of {}",
                out.len(),
                len
            );
            let Some(mut rest) = out.strip_prefix(PREFACE) else {
                return Ok(());
            };
            // Complete frames; a trailing partial frame is the client's own, handed over.
            while rest.len() >= FRAME_HEADER {
                let len =
                    usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
                if rest.len() < FRAME_HEADER + len {
                    break;
                }
                let (kind, flags) = (rest[3], rest[4]);
                prop_assert_ne!(kind, CONTINUATION, "a CONTINUATION frame was passed on");
                if kind == HEADERS {
                    prop_assert!(len <= MAX_FRAME, "a HEADERS frame of {} bytes", len);
                    prop_assert_ne!(flags & END_HEADERS, 0);
                    prop_assert_eq!(flags & PADDED, 0);
                }
                rest = &rest[FRAME_HEADER + len..];
            }
            Ok(())
        }

        /// Random HPACK representations, lengths and indexes not to be trusted: indexed
        /// fields, literals with or without Huffman coding, table size updates, overlong
        /// integers.
        fn hpack_noise() -> impl Strategy<Value = Vec<u8>> {
            let representation = prop_oneof![
                any::<u8>().prop_map(|i| vec![0x80 | i]),
                (0..6000usize).prop_map(|size| {
                    let mut out = Vec::new();
                    put_integer(&mut out, 0x20, 5, size);
                    out
                }),
                (
                    any::<bool>(),
                    0..0x7fu8,
                    fuzzing::bytes(20),
                    any::<bool>(),
                    0..0x7fu8
                )
                    .prop_map(|(indexing, name_len, data, huffman, value_len)| {
                        let mut out = vec![if indexing { 0x40 } else { 0x00 }, name_len];
                        out.extend_from_slice(&data);
                        out.push(if huffman { 0x80 | value_len } else { value_len });
                        out.extend_from_slice(&data);
                        out
                    }),
                (1..12usize).prop_map(|n| {
                    let mut out = vec![0x7f];
                    out.extend(std::iter::repeat_n(0xff, n));
                    out
                }),
            ];
            vec(representation, 0..12).prop_map(|parts| parts.concat())
        }

        /// A frame with no regard for the rules: any type (mostly HEADERS and
        /// CONTINUATION), flags and stream, its payload HPACK noise or any bytes.
        fn any_frame() -> impl Strategy<Value = Vec<u8>> {
            let kind = prop_oneof![3 => Just(HEADERS), 2 => Just(CONTINUATION), 1 => any::<u8>()];
            let payload = prop_oneof![hpack_noise(), fuzzing::bytes(64)];
            (kind, any::<u8>(), 0..4u32, payload).prop_map(|(kind, flags, stream, payload)| {
                let mut frame = Vec::new();
                push_frame(&mut frame, kind, flags, stream, &payload);
                frame
            })
        }

        proptest! {
            #![proptest_config(config(96))]

            #[test]
            fn valid_streams_pass_with_only_their_authorities_changed(
                requests in requests(),
                (chunks, capacity) in chunking(),
            ) {
                let refused = requests.iter().any(|(headers, _, _)| too_large(headers));
                let result = run(stream(&requests), &chunks, capacity);
                if refused {
                    let err = result.expect_err("a header list over the limit is refused");
                    prop_assert_eq!(err.kind(), io::ErrorKind::InvalidData);
                    return Ok(());
                }
                let out = result.expect("a valid stream passes");
                let mut frames = frames(&out).into_iter();
                prop_assert_eq!(frames.next().map(|f| f.0), Some(0x4), "SETTINGS first");
                // The server's decoder: the filter's literals never change its table.
                let mut decoder = Decoder::new();
                for (i, (headers, framing, after)) in requests.iter().enumerate() {
                    let (kind, flags, stream, payload) = frames.next().expect("HEADERS");
                    prop_assert_eq!((kind, stream), (HEADERS, 2 * i as u32 + 1));
                    prop_assert_eq!(flags & END_STREAM != 0, framing.end_stream);
                    prop_assert_eq!(flags & PRIORITY != 0, framing.priority.is_some());
                    let block = match framing.priority {
                        Some(priority) => {
                            prop_assert_eq!(&payload[..5], &priority[..]);
                            &payload[5..]
                        }
                        None => &payload[..],
                    };
                    let decoded = decoder.decode(block).expect("the forwarded block decodes");
                    prop_assert_eq!(decoded, forwarded(headers));
                    for frame in after {
                        let (kind, flags, stream, payload) = frames.next().expect("a frame");
                        let mut passed = Vec::new();
                        push_frame(&mut passed, kind, flags, stream, &payload);
                        prop_assert_eq!(&passed, frame, "passed through unchanged");
                    }
                }
                prop_assert!(frames.next().is_none(), "nothing more");
            }
        }

        proptest! {
            #![proptest_config(config(192))]

            #[test]
            fn damaged_streams_are_passed_or_refused_within_bounds(
                requests in requests(),
                edits in fuzzing::edits(),
                (chunks, capacity) in chunking(),
            ) {
                let input = fuzzing::mutate(stream(&requests), &edits);
                passed_or_refused(input, &chunks, capacity)?;
            }

            #[test]
            fn arbitrary_frames_are_passed_or_refused_within_bounds(
                frames in vec(any_frame(), 0..8),
                tail in fuzzing::bytes(64),
                (chunks, capacity) in chunking(),
            ) {
                let mut input = PREFACE.to_vec();
                input.extend(frames.concat());
                input.extend(tail);
                passed_or_refused(input, &chunks, capacity)?;
            }

            #[test]
            fn arbitrary_bytes_are_passed_or_refused_within_bounds(
                preface in any::<bool>(),
                bytes in fuzzing::bytes(1024),
                (chunks, capacity) in chunking(),
            ) {
                let mut input = if preface { PREFACE.to_vec() } else { Vec::new() };
                input.extend(bytes);
                passed_or_refused(input, &chunks, capacity)?;
            }
        }
    }
}

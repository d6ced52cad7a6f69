//! hyper answers a request whose head does not parse by itself, before any of our code runs:
//! 400 (bad syntax), 414 (URI too long) or 431 (headers too large), each with an empty body,
//! and then closes the connection. The contract promises a JSON error body on every error, so
//! [`JsonErrors`] wraps a connection's socket and replaces such a bodiless answer, on its way
//! out, with the same status carrying `{"error":{"code":..,"message":..}}`.
//!
//! Only those three statuses with `content-length: 0` are touched: every answer the router's
//! own code makes has a body, so none of them can match.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct JsonErrors<T> {
    inner: T,
    /// A replacement being written, how much of it is out, and the length of the original
    /// buffer, reported as written once the replacement is.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<T> JsonErrors<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            pending: None,
        }
    }
}

/// The JSON answer standing in for hyper's bodiless one in `head`, if it is one.
fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let (code, message) = match head.get(..13)? {
        b"HTTP/1.1 400 " | b"HTTP/1.0 400 " => (
            "bad_request",
            "the request is not valid HTTP/1.1 (request line or a header does not parse)",
        ),
        b"HTTP/1.1 414 " | b"HTTP/1.0 414 " => ("uri_too_long", "the request URI is too long"),
        b"HTTP/1.1 431 " | b"HTTP/1.0 431 " => (
            "headers_too_large",
            "the request's headers are too large or too many",
        ),
        _ => return None,
    };
    let text = std::str::from_utf8(&head[..end]).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let headers: Vec<&str> = lines.collect();
    if !headers
        .iter()
        .any(|h| h.eq_ignore_ascii_case("content-length: 0"))
    {
        return None;
    }
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let mut out = format!("{status_line}\r\n");
    for h in headers
        .iter()
        .filter(|h| !h.to_ascii_lowercase().starts_with("content-length:"))
    {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&head[end + 4..]);
    Some(bytes)
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    /// Writes what is pending; ready with the original buffer's length once it is all out.
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<usize>>> {
        while let Some((bytes, written, reported)) = &mut self.pending {
            if *written == bytes.len() {
                let reported = *reported;
                self.pending = None;
                return Poll::Ready(Ok(Some(reported)));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(None))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none()
            && let Some(bytes) = replacement(buf)
        {
            this.pending = Some((bytes, 0, buf.len()));
        }
        if this.pending.is_some() {
            return match ready!(this.drive(cx))? {
                Some(reported) => Poll::Ready(Ok(reported)),
                None => Poll::Ready(Ok(0)),
            };
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drive(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drive(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // hyper then gathers a head into one buffer and hands it over in one call, which is what
    // lets `replacement` see it whole.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bodiless_431_gets_a_json_body() {
        let head =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(replacement(head).expect("replaced")).expect("utf-8");
        let (head, body) = out.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 431 "));
        assert!(head.contains("date: x"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(json["error"]["code"], "headers_too_large");
    }

    #[test]
    fn answers_with_a_body_or_other_statuses_are_left_alone() {
        assert!(replacement(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 51\r\n\r\n{}").is_none());
        assert!(replacement(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(replacement(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(replacement(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n").is_none());
    }
}

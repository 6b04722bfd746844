//! What the first bytes of a proxied connection say about the name it is for: the SNI of a
//! TLS ClientHello (RFC 8446 §4.1.2, RFC 6066 §3), or the host of an HTTP/1.x request.

/// Verdict on the bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// Not enough bytes yet.
    More,
    /// A TLS ClientHello; its server name when it has one.
    Tls(Option<String>),
    /// Looks like HTTP/1.x (a method token then a space): the request is read by the HTTP side.
    Http,
    /// Neither.
    Unknown,
}

const RECORD_HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;

/// Classify the first bytes of a connection.
pub fn sniff(b: &[u8]) -> Sniffed {
    let Some(&first) = b.first() else {
        return Sniffed::More;
    };
    if first == RECORD_HANDSHAKE {
        return match handshake_message(b) {
            Err(()) => Sniffed::Unknown,
            Ok(None) => Sniffed::More,
            Ok(Some(msg)) => Sniffed::Tls(client_hello_sni(&msg).ok().flatten()),
        };
    }
    // An HTTP method is an uppercase token followed by a space.
    let head = &b[..b.len().min(16)];
    match head.iter().position(|&c| c == b' ') {
        Some(0) => Sniffed::Unknown,
        Some(n) if head[..n].iter().all(u8::is_ascii_uppercase) => Sniffed::Http,
        Some(_) => Sniffed::Unknown,
        None if head.len() < 16 && head.iter().all(u8::is_ascii_uppercase) => Sniffed::More,
        None => Sniffed::Unknown,
    }
}

/// The first handshake message, gathered from as many handshake records as it spans:
/// `Ok(None)` when more bytes are needed, `Err` when this is not a TLS handshake.
fn handshake_message(mut b: &[u8]) -> Result<Option<Vec<u8>>, ()> {
    let mut msg = Vec::new();
    loop {
        if b.len() < 5 {
            return Ok(None);
        }
        if b[0] != RECORD_HANDSHAKE || b[1] != 3 {
            return Err(());
        }
        let len = usize::from(u16::from_be_bytes([b[3], b[4]]));
        if len == 0 || len > 16_384 {
            return Err(());
        }
        let Some(payload) = b.get(5..5 + len) else {
            return Ok(None);
        };
        msg.extend_from_slice(payload);
        b = &b[5 + len..];
        if msg.len() >= 4 {
            if msg[0] != CLIENT_HELLO {
                return Err(());
            }
            let want =
                4 + (usize::from(msg[1]) << 16 | usize::from(msg[2]) << 8 | usize::from(msg[3]));
            if msg.len() >= want {
                msg.truncate(want);
                return Ok(Some(msg));
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ()> {
        if self.0.len() < n {
            return Err(());
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<usize, ()> {
        Ok(usize::from(self.take(1)?[0]))
    }
    fn u16(&mut self) -> Result<usize, ()> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
}

/// The host_name of the server_name extension of a ClientHello message (with its 4-byte
/// handshake header).
fn client_hello_sni(msg: &[u8]) -> Result<Option<String>, ()> {
    let mut r = Reader(msg);
    r.take(4)?; // type, length
    r.take(2 + 32)?; // legacy_version, random
    let n = r.u8()?;
    r.take(n)?; // session id
    let n = r.u16()?;
    r.take(n)?; // cipher suites
    let n = r.u8()?;
    r.take(n)?; // compression methods
    if r.0.is_empty() {
        return Ok(None);
    }
    let n = r.u16()?;
    let mut ext = Reader(r.take(n)?);
    while !ext.0.is_empty() {
        let kind = ext.u16()?;
        let n = ext.u16()?;
        let data = ext.take(n)?;
        if kind != usize::from(EXT_SERVER_NAME) {
            continue;
        }
        let mut list = Reader(data);
        let n = list.u16()?;
        let mut list = Reader(list.take(n)?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let n = list.u16()?;
            let name = list.take(n)?;
            if name_type == 0 {
                return Ok(normalize(std::str::from_utf8(name).map_err(|_| ())?));
            }
        }
    }
    Ok(None)
}

/// A host name as the rules compare it: lower case, no trailing dot, no port; `None` for
/// IP literals and anything that is not a plausible DNS name.
pub fn normalize(host: &str) -> Option<String> {
    let host = host.trim();
    if host.starts_with('[') {
        return None;
    }
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|c| c.is_ascii_digit()) => h,
        Some(_) => return None,
        None => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.parse::<std::net::Ipv4Addr>().is_err()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_')
        && host.split('.').all(|l| !l.is_empty() && l.len() <= 63);
    ok.then_some(host)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ClientHello record naming `sni` (none when empty), padded with an extra
    /// extension before the server_name one.
    pub(crate) fn client_hello(sni: &str) -> Vec<u8> {
        let mut ext = Vec::new();
        ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]); // ec_point_formats
        if !sni.is_empty() {
            let n = sni.len() as u16;
            ext.extend_from_slice(&0u16.to_be_bytes());
            ext.extend_from_slice(&(n + 5).to_be_bytes());
            ext.extend_from_slice(&(n + 3).to_be_bytes());
            ext.push(0);
            ext.extend_from_slice(&n.to_be_bytes());
            ext.extend_from_slice(sni.as_bytes());
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut msg = vec![CLIENT_HELLO, 0];
        msg.extend_from_slice(&(body.len() as u16).to_be_bytes());
        msg.extend_from_slice(&body);
        let mut rec = vec![RECORD_HANDSHAKE, 3, 1];
        rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        rec.extend_from_slice(&msg);
        rec
    }

    #[test]
    fn the_server_name_of_a_client_hello_is_found() {
        let rec = client_hello("Allowed.Test");
        assert_eq!(sniff(&rec), Sniffed::Tls(Some("allowed.test".into())));
        assert_eq!(sniff(&client_hello("")), Sniffed::Tls(None));
        // Partial records need more bytes, at every cut.
        for cut in 1..rec.len() {
            assert_eq!(sniff(&rec[..cut]), Sniffed::More, "cut at {cut}");
        }
    }

    #[test]
    fn a_client_hello_split_over_two_records_is_joined() {
        let rec = client_hello("a.example.test");
        let msg = &rec[5..];
        let (a, b) = msg.split_at(20);
        let mut two = Vec::new();
        for part in [a, b] {
            two.extend_from_slice(&[RECORD_HANDSHAKE, 3, 1]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        assert_eq!(sniff(&two), Sniffed::Tls(Some("a.example.test".into())));
    }

    #[test]
    fn garbage_and_lies_are_not_tls() {
        assert_eq!(sniff(&[0x16, 3, 1, 0, 0]), Sniffed::Unknown);
        assert_eq!(sniff(&[0x16, 9, 9, 0, 5, 1, 2, 3, 4, 5]), Sniffed::Unknown);
        // A record whose inner lengths overrun it: a ClientHello without a usable name.
        let mut rec = client_hello("x.test");
        let n = rec.len();
        rec[n - 8] = 0xff;
        assert!(matches!(
            sniff(&rec),
            Sniffed::Tls(None) | Sniffed::Tls(Some(_))
        ));
        assert_eq!(sniff(b"\x00\x01\x02"), Sniffed::Unknown);
        assert_eq!(sniff(b"SSH-2.0-OpenSSH"), Sniffed::Unknown);
    }

    #[test]
    fn http_requests_are_recognised() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniffed::Http);
        assert_eq!(sniff(b"POS"), Sniffed::More);
        assert_eq!(sniff(b" GET"), Sniffed::Unknown);
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize("Allowed.Test:8080"), Some("allowed.test".into()));
        assert_eq!(normalize("allowed.test."), Some("allowed.test".into()));
        assert_eq!(normalize("198.51.100.2"), None);
        assert_eq!(normalize("[::1]:80"), None);
        assert_eq!(normalize("a..b"), None);
        assert_eq!(normalize("a b"), None);
        assert_eq!(normalize("x:y"), None);
    }
}

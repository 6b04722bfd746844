//! Just enough of the DNS wire format (RFC 1035) for the forwarder: the question of a query,
//! a REFUSED answer to it, and the A records (with TTLs) of an upstream answer.

use std::net::Ipv4Addr;

/// The question of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    /// Lower-case, without the trailing dot.
    pub name: String,
    pub qtype: u16,
    /// Offset of the end of the question section.
    pub end: usize,
}

/// Record type A.
pub const TYPE_A: u16 = 1;
const RCODE_REFUSED: u8 = 5;
const HEADER: usize = 12;

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(i)?,
        *b.get(i + 1)?,
        *b.get(i + 2)?,
        *b.get(i + 3)?,
    ]))
}

/// Read a (possibly compressed) name at `pos`: the name and the offset after it.
fn read_name(b: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *b.get(pos)?;
        match len {
            0 => {
                return Some((name, end.unwrap_or(pos + 1)));
            }
            l if l & 0xc0 == 0xc0 => {
                let target = usize::from(u16_at(b, pos)? & 0x3fff);
                end.get_or_insert(pos + 2);
                jumps += 1;
                if jumps > 16 || target >= b.len() {
                    return None;
                }
                pos = target;
            }
            l if l & 0xc0 != 0 => return None,
            l => {
                let label = b.get(pos + 1..pos + 1 + usize::from(l))?;
                if !name.is_empty() {
                    name.push('.');
                }
                for &c in label {
                    if c == b'.' || !c.is_ascii_graphic() {
                        return None;
                    }
                    name.push(char::from(c.to_ascii_lowercase()));
                }
                if name.len() > 253 {
                    return None;
                }
                pos += 1 + usize::from(l);
            }
        }
    }
}

/// The question of a standard query with exactly one question.
pub fn parse_query(b: &[u8]) -> Option<Question> {
    let id = u16_at(b, 0)?;
    let flags = u16_at(b, 2)?;
    let qr = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0xf;
    if qr || opcode != 0 || u16_at(b, 4)? != 1 {
        return None;
    }
    let (name, pos) = read_name(b, HEADER)?;
    let qtype = u16_at(b, pos)?;
    u16_at(b, pos + 2)?;
    Some(Question {
        id,
        name,
        qtype,
        end: pos + 4,
    })
}

/// A REFUSED answer to `query` (its header and question, no records).
pub fn refused(query: &[u8], q: &Question) -> Vec<u8> {
    let mut r = query[..q.end.min(query.len())].to_vec();
    if r.len() >= HEADER {
        // QR=1, keep opcode and RD, RA=1, RCODE=REFUSED.
        r[2] = 0x80 | (query[2] & 0x79);
        r[3] = 0x80 | RCODE_REFUSED;
        r[6..12].fill(0);
    }
    r
}

/// The A records of an answer, with their TTLs (seconds).
pub fn answer_a_records(b: &[u8]) -> Option<Vec<(Ipv4Addr, u32)>> {
    let qd = u16_at(b, 4)?;
    let an = u16_at(b, 6)?;
    let mut pos = HEADER;
    for _ in 0..qd {
        let (_, p) = read_name(b, pos)?;
        pos = p + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        let (_, p) = read_name(b, pos)?;
        let rtype = u16_at(b, p)?;
        let ttl = u32_at(b, p + 4)?;
        let rdlen = usize::from(u16_at(b, p + 8)?);
        let rdata = b.get(p + 10..p + 10 + rdlen)?;
        if rtype == TYPE_A && rdlen == 4 {
            out.push((Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]), ttl));
        }
        pos = p + 10 + rdlen;
    }
    Some(out)
}

/// A query for `name` (tests and tools).
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        b.push(label.len().min(63) as u8);
        b.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    b.push(0);
    b.extend_from_slice(&qtype.to_be_bytes());
    b.extend_from_slice(&1u16.to_be_bytes());
    b
}

/// An answer to `query` with one A record per address (tests: a tiny upstream server).
pub fn answer(query: &[u8], q: &Question, addrs: &[Ipv4Addr], ttl: u32) -> Vec<u8> {
    let mut r = query[..q.end].to_vec();
    r[2] = 0x80 | (query[2] & 0x79);
    r[3] = 0x80;
    let n = if q.qtype == TYPE_A { addrs.len() } else { 0 };
    r[6..8].copy_from_slice(&(n as u16).to_be_bytes());
    r[8..12].fill(0);
    for a in addrs.iter().take(n) {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&[0, 4]);
        r.extend_from_slice(&a.octets());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_answers_and_refusals_round_trip() {
        let q = query(0x1234, "PyPI.org", TYPE_A);
        let parsed = parse_query(&q).unwrap_or_else(|| panic!("parse"));
        assert_eq!(parsed.name, "pypi.org");
        assert_eq!(parsed.id, 0x1234);
        assert_eq!(parsed.qtype, TYPE_A);
        let a = answer(&q, &parsed, &[Ipv4Addr::new(198, 51, 100, 9)], 30);
        assert_eq!(
            answer_a_records(&a),
            Some(vec![(Ipv4Addr::new(198, 51, 100, 9), 30)])
        );
        assert!(parse_query(&a).is_none(), "an answer is not a query");
        let r = refused(&q, &parsed);
        assert_eq!(r[3] & 0x0f, RCODE_REFUSED);
        assert_eq!(&r[0..2], &[0x12, 0x34]);
    }

    #[test]
    fn malformed_packets_are_rejected_not_panicking() {
        assert!(parse_query(&[]).is_none());
        assert!(parse_query(&[0; 11]).is_none());
        let mut loopy = query(1, "a.b", TYPE_A);
        loopy[12] = 0xc0;
        loopy[13] = 12;
        assert!(parse_query(&loopy).is_none());
        for n in 0..40 {
            let q = query(7, "x.example.com", TYPE_A);
            let cut = &q[..q.len().saturating_sub(n)];
            let _ = parse_query(cut);
            let _ = answer_a_records(cut);
        }
    }
}

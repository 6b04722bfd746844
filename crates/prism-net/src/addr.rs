//! Address plan: every networked sandbox gets a /30 of the pool (host end `.1`, sandbox `.2`)
//! and a host-side interface named after its id.

use std::net::Ipv4Addr;

use crate::NetError;

/// Prefix of every host-side interface Prism creates (`prsb` + 11 hex digits).
pub const IFNAME_PREFIX: &str = "prsb";

/// The default pool: carrier-grade NAT space that a host rarely uses itself.
pub const DEFAULT_POOL: &str = "100.96.0.0/16";

/// An IPv4 range carved into /30 slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    net: u32,
    prefix: u8,
}

/// The two addresses of one sandbox's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub index: u32,
    /// The host end (the sandbox's gateway and DNS server).
    pub host: Ipv4Addr,
    /// The sandbox end.
    pub sandbox: Ipv4Addr,
}

/// Prefix length of each sandbox's link.
pub const SLOT_PREFIX: u8 = 30;

impl Pool {
    /// [`DEFAULT_POOL`].
    pub const DEFAULT: Pool = Pool {
        net: 0x6460_0000,
        prefix: 16,
    };

    /// Parses `A.B.C.D/N` with N from 8 to 29.
    pub fn parse(s: &str) -> Result<Self, NetError> {
        let bad = || NetError::Pool(s.to_string());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if !(8..=29).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        let net = u32::from(addr);
        if net & !mask != 0 {
            return Err(bad());
        }
        Ok(Pool { net, prefix })
    }

    /// Number of /30 slots.
    pub fn slots(&self) -> u32 {
        1 << (SLOT_PREFIX - self.prefix)
    }

    /// Slot `index` (None when out of range).
    pub fn slot(&self, index: u32) -> Option<Slot> {
        if index >= self.slots() {
            return None;
        }
        let base = self.net + index * 4;
        Some(Slot {
            index,
            host: Ipv4Addr::from(base + 1),
            sandbox: Ipv4Addr::from(base + 2),
        })
    }

    /// The slot whose host end is `addr`.
    pub fn slot_of_host(&self, addr: Ipv4Addr) -> Option<u32> {
        let a = u32::from(addr);
        let off = a.checked_sub(self.net)?;
        (off % 4 == 1 && off / 4 < self.slots()).then_some(off / 4)
    }

    /// `A.B.C.D/N`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.net), self.prefix)
    }
}

/// The host-side interface of sandbox `id`: `prsb` + 11 hex digits of a stable hash of the id
/// (15 bytes, the kernel's limit).
pub fn host_ifname(id: &str) -> String {
    // FNV-1a: stable across builds (the name must be found again by the next daemon).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{IFNAME_PREFIX}{:011x}", h & 0x0fff_ffff_ffff)
}

/// The first free slot given the taken ones.
pub fn first_free(pool: &Pool, taken: &std::collections::BTreeSet<u32>) -> Option<Slot> {
    (0..pool.slots())
        .find(|i| !taken.contains(i))
        .and_then(|i| pool.slot(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_parse_and_slots_are_thirty_twos() {
        let p = Pool::parse("100.96.0.0/16").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.slots(), 16384);
        assert_eq!(p, Pool::DEFAULT);
        let s = p.slot(3).unwrap_or_else(|| panic!("slot"));
        assert_eq!(s.host, Ipv4Addr::new(100, 96, 0, 13));
        assert_eq!(s.sandbox, Ipv4Addr::new(100, 96, 0, 14));
        assert_eq!(p.slot_of_host(s.host), Some(3));
        assert_eq!(p.slot_of_host(s.sandbox), None);
        assert_eq!(p.slot_of_host(Ipv4Addr::new(100, 97, 0, 1)), None);
        assert!(p.slot(16384).is_none());
        for bad in [
            "100.96.0.1/16",
            "100.96.0.0/30",
            "x/16",
            "100.96.0.0",
            "1.0.0.0/7",
        ] {
            assert!(Pool::parse(bad).is_err(), "{bad}");
        }
        let taken = [0, 1, 3].into_iter().collect();
        assert_eq!(first_free(&p, &taken).map(|s| s.index), Some(2));
    }

    #[test]
    fn interface_names_fit_and_differ() {
        let a = host_ifname("0193aaaa00007000800000000000000a");
        let b = host_ifname("0193aaaa00007000800000000000000b");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with(IFNAME_PREFIX));
        assert_ne!(a, b);
        assert_eq!(a, host_ifname("0193aaaa00007000800000000000000a"));
    }
}

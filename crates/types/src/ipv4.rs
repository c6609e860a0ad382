//! IPv4 addresses and subnets for NAPI's IPAM: strict parsing and range arithmetic.

use std::net::Ipv4Addr;

/// Parses a dotted quad strictly (no leading zeros, no shorthand).
pub fn parse_addr(s: &str) -> Result<Ipv4Addr, String> {
    s.parse::<Ipv4Addr>().map_err(|_| format!("must be an IPv4 address like 10.0.0.1 (got {:?})", crate::spec::truncate(s, 60)))
}

/// An IPv4 subnet (`addr/prefix`, host bits zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub base: u32,
    pub prefix: u8,
}

impl Subnet {
    /// Parses `10.0.0.0/24`; refuses host bits and prefixes outside 8..=30.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) =
            s.split_once('/').ok_or_else(|| format!("must be a CIDR block like 10.0.0.0/24 (got {:?})", crate::spec::truncate(s, 60)))?;
        let base = u32::from(parse_addr(addr)?);
        let prefix: u8 = prefix.parse().map_err(|_| format!("prefix length must be a number (got {prefix:?})"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("prefix length must be between 8 and 30 (got /{prefix})"));
        }
        let subnet = Subnet { base, prefix };
        if base & !subnet.mask() != 0 {
            return Err(format!("has host bits set: did you mean {}?", Subnet { base: base & subnet.mask(), prefix }));
        }
        Ok(subnet)
    }

    pub fn mask(&self) -> u32 {
        if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) }
    }

    /// The netmask in dotted form, e.g. `255.255.255.0`.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.base
    }

    /// The first usable host address (network address + 1).
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    /// The last usable host address (broadcast - 1).
    pub fn last_host(&self) -> Ipv4Addr {
        Ipv4Addr::from((self.base | !self.mask()) - 1)
    }

    /// True for an address that may be given to a host (not the network or broadcast address).
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip >= self.first_host() && ip <= self.last_host()
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_does_range_arithmetic() {
        let s = Subnet::parse("10.1.2.0/24").unwrap();
        assert_eq!(s.netmask().to_string(), "255.255.255.0");
        assert_eq!(s.first_host().to_string(), "10.1.2.1");
        assert_eq!(s.last_host().to_string(), "10.1.2.254");
        assert!(s.contains("10.1.2.255".parse().unwrap()));
        assert!(!s.is_host("10.1.2.255".parse().unwrap()));
        assert!(!s.contains("10.1.3.1".parse().unwrap()));
    }

    #[test]
    fn refuses_bad_blocks_with_hints() {
        assert_eq!(Subnet::parse("10.1.2.7/24").unwrap_err(), "has host bits set: did you mean 10.1.2.0/24?");
        assert!(Subnet::parse("10.1.2.0").is_err());
        assert!(Subnet::parse("10.1.2.0/33").is_err());
        assert!(Subnet::parse("10.01.2.0/24").is_err());
        assert!(parse_addr("1.2.3").is_err());
    }
}

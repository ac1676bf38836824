//! Egress policy of a profile: where a sandbox may open connections to. Engine-neutral: what each
//! policy means is decided here, how it is enforced (bridge networks, packet-filter rules) is the
//! runtime adapter's business. Names are never resolved: an allow list holds address ranges only.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// Where a sandbox of a profile may connect to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// No outbound connection at all; inbound connections to the published endpoint still work.
    None,
    /// The internet: every address except the host itself, other sandboxes and the ranges of
    /// [`PUBLIC_EXCLUDED_V4`] (private, loopback, link-local, carrier-grade NAT, multicast, ...).
    #[default]
    Public,
    /// Only the ranges in the profile's `egress_allow`.
    Allow,
    /// No restriction (the host and private networks included); other sandboxes stay unreachable.
    Open,
}

impl Egress {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Public => "public",
            Self::Allow => "allow",
            Self::Open => "open",
        }
    }
}

impl fmt::Display for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// IPv4 ranges a `public` sandbox never reaches: "this network", private (RFC 1918), carrier-grade
/// NAT (RFC 6598), loopback, link-local (where cloud metadata services answer), multicast and
/// reserved. Documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) are not in it:
/// they stand for the internet in tests.
pub const PUBLIC_EXCLUDED_V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// An address range in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`), with no host bits set, so
/// its text is the canonical one every packet filter prints back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// Parses `address/length`.
    ///
    /// # Errors
    /// A message saying what is wrong: no `/length`, a bad address or length, or host bits set
    /// (with the network that was probably meant).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (address, length) = raw
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{raw:?} is not in CIDR notation (address/length)"))?;
        let address = IpAddr::from_str(address)
            .map_err(|_| format!("{raw:?} does not start with an IP address"))?;
        let max_len = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = length
            .parse::<u8>()
            .ok()
            .filter(|len| *len <= max_len)
            .ok_or_else(|| format!("{raw:?} has a prefix length outside 0-{max_len}"))?;
        let cidr = Self {
            network: mask(address, prefix_len),
            prefix_len,
        };
        if cidr.network != address {
            return Err(format!(
                "{raw:?} has host bits set (the range is {cidr}): write the network address"
            ));
        }
        Ok(cidr)
    }

    #[must_use]
    pub fn is_ipv4(&self) -> bool {
        self.network.is_ipv4()
    }

    #[must_use]
    pub fn contains(&self, address: IpAddr) -> bool {
        address.is_ipv4() == self.is_ipv4() && mask(address, self.prefix_len) == self.network
    }
}

/// `address` with every bit past `prefix_len` cleared.
fn mask(address: IpAddr, prefix_len: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & kept))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & kept))
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The ranges of [`PUBLIC_EXCLUDED_V4`], parsed.
#[must_use]
pub fn public_excluded_v4() -> Vec<Cidr> {
    PUBLIC_EXCLUDED_V4
        .iter()
        .filter_map(|raw| Cidr::parse(raw).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cidrs_parse_in_canonical_form_only() {
        assert_eq!(Cidr::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            Cidr::parse("198.51.100.7/32").unwrap().to_string(),
            "198.51.100.7/32"
        );
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(
            Cidr::parse("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "10.0.0/8",
            "example.com/32",
            "2001:db8::/129",
            "",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
        let host_bits = Cidr::parse("10.1.2.3/8").unwrap_err();
        assert!(host_bits.contains("10.0.0.0/8"), "{host_bits}");
    }

    #[test]
    fn containment_follows_the_prefix() {
        let cidr = Cidr::parse("172.16.0.0/12").unwrap();
        assert!(cidr.contains("172.31.255.255".parse().unwrap()));
        assert!(!cidr.contains("172.32.0.0".parse().unwrap()));
        assert!(!cidr.contains("::1".parse().unwrap()));
    }

    #[test]
    fn every_excluded_public_range_parses() {
        assert_eq!(public_excluded_v4().len(), PUBLIC_EXCLUDED_V4.len());
        let metadata = "169.254.169.254".parse().unwrap();
        assert!(public_excluded_v4().iter().any(|c| c.contains(metadata)));
        let internet = "198.51.100.2".parse().unwrap();
        assert!(!public_excluded_v4().iter().any(|c| c.contains(internet)));
    }
}

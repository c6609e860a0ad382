//! MAC addresses as NAPI keys them: accepted with or without colons, stored as 12 hex digits.

use std::fmt;

/// A 48-bit MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

/// Joyent's OUI, which Triton uses for generated VM MACs; guests and operators recognise it.
pub const TRITON_OUI: [u8; 3] = [0x90, 0xb8, 0xd0];

impl Mac {
    /// Parses `90:b8:d0:57:53:70`, `90-b8-d0-57-53-70` or `90b8d0575370` (any case).
    pub fn parse(s: &str) -> Result<Self, String> {
        let hex: String = s.chars().filter(|c| *c != ':' && *c != '-').collect();
        let err = || format!("must be a MAC address like 90:b8:d0:57:53:70 (got {:?})", crate::spec::truncate(s, 40));
        if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(err());
        }
        if s.contains(':') || s.contains('-') {
            let sep = if s.contains(':') { ':' } else { '-' };
            if s.split(sep).count() != 6 || s.split(sep).any(|p| p.len() != 2) {
                return Err(err());
            }
        }
        let mut b = [0u8; 6];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| err())?;
        }
        Ok(Mac(b))
    }

    /// A random, locally unique MAC under Joyent's OUI.
    pub fn random() -> Self {
        let tail: [u8; 3] = rand::random();
        Mac([TRITON_OUI[0], TRITON_OUI[1], TRITON_OUI[2], tail[0], tail[1], tail[2]])
    }

    /// The store key: 12 lowercase hex digits, no separators.
    pub fn key(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_napi_forms() {
        let a = Mac::parse("90:B8:D0:57:53:70").unwrap();
        assert_eq!(a, Mac::parse("90b8d0575370").unwrap());
        assert_eq!(a, Mac::parse("90-b8-d0-57-53-70").unwrap());
        assert_eq!(a.to_string(), "90:b8:d0:57:53:70");
        assert_eq!(a.key(), "90b8d0575370");
        assert!(Mac::parse("90:b8:d0:57:53").is_err());
        assert!(Mac::parse("90:b8:d0:57:5:370").is_err());
        assert!(Mac::parse("zzb8d0575370").is_err());
        assert_eq!(Mac::random().0[..3], TRITON_OUI);
    }
}

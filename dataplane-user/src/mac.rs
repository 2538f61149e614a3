//! MAC address parsing and printing.

use std::{fmt, str::FromStr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid MAC address {input:?}: expected six hex octets separated by ':' (e.g. 02:42:ac:10:56:02)")]
pub struct MacParseError {
    pub input: String,
}

impl FromStr for Mac {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError { input: s.to_string() };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

/// Stored and shown as text (`02:42:ac:10:56:02`), as it always was in the store.
impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Mac {
    pub const fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let m: Mac = "02:42:AC:10:56:0a".parse().unwrap();
        assert_eq!(m.0, [2, 0x42, 0xac, 0x10, 0x56, 0x0a]);
        assert_eq!(m.to_string(), "02:42:ac:10:56:0a");
        assert!(m.is_unicast());
        assert!(!"ff:ff:ff:ff:ff:ff".parse::<Mac>().unwrap().is_unicast());
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "02:42:ac:10:56",
            "02:42:ac:10:56:0a:01",
            "2:42:ac:10:56:0a",
            "02-42-ac-10-56-0a",
            "02:42:ac:10:56:zz",
            "02:42:ac:10:56:+1",
        ] {
            let e = bad.parse::<Mac>().unwrap_err();
            assert_eq!(e.input, bad);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }
}

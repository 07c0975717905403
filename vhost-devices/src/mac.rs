//! Ethernet MAC addresses as given on the command line (`mac=52:54:00:12:34:56`).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Why a MAC address was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MacError {
    /// Not six two-digit hexadecimal octets separated by ':'.
    #[error("invalid MAC address '{0}': expected six hex octets like 52:54:00:12:34:56")]
    Syntax(String),
    /// The group bit (bit 0 of the first octet) is set: not a station address.
    #[error("invalid MAC address '{0}': a multicast address cannot name a network card")]
    Multicast(String),
    /// All zeros.
    #[error("invalid MAC address '{0}': the all-zero address cannot name a network card")]
    Zero(String),
}

/// A unicast Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddress([u8; 6]);

impl MacAddress {
    /// The six octets, first transmitted first.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddress {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Self, MacError> {
        let syntax = || MacError::Syntax(s.to_string());
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for o in octets.iter_mut() {
            let p = parts.next().ok_or_else(syntax)?;
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(syntax());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| syntax())?;
        }
        if parts.next().is_some() {
            return Err(syntax());
        }
        if octets[0] & 1 != 0 {
            return Err(MacError::Multicast(s.to_string()));
        }
        if octets == [0; 6] {
            return Err(MacError::Zero(s.to_string()));
        }
        Ok(MacAddress(octets))
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_hex_octets_parse_and_print_back() {
        let m: MacAddress = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.octets(), [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
    }

    #[test]
    fn malformed_addresses_are_syntax_errors() {
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52-54-00-12-34-56",
            "5:54:00:12:34:56",
            "52:54:00:12:34:5g",
            "+2:54:00:12:34:56",
            "052:54:00:12:34:56",
            "52:54:00:12:34:56:",
        ] {
            assert_eq!(
                bad.parse::<MacAddress>(),
                Err(MacError::Syntax(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn multicast_and_zero_are_not_station_addresses() {
        assert!(matches!(
            "01:00:5e:00:00:01".parse::<MacAddress>(),
            Err(MacError::Multicast(_))
        ));
        assert!(matches!(
            "ff:ff:ff:ff:ff:ff".parse::<MacAddress>(),
            Err(MacError::Multicast(_))
        ));
        assert!(matches!(
            "00:00:00:00:00:00".parse::<MacAddress>(),
            Err(MacError::Zero(_))
        ));
    }
}

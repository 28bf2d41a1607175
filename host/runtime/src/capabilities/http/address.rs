//! Address classification: which IP addresses are not public (loopback,
//! private, link-local, cloud metadata, ...) and so need an explicit grant.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918, fc00::/7 (ULA), fec0::/10 (site-local).
    Private,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// 169.254.169.254, fd00:ec2::254.
    CloudMetadata,
    /// 0.0.0.0/8, ::.
    Unspecified,
    /// 100.64.0.0/10.
    CarrierGradeNat,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 240.0.0.0/4, 192.0.0.0/24, 198.18.0.0/15, documentation ranges,
    /// Teredo (2001::/32) with public embedded addresses.
    Reserved,
}

impl fmt::Display for AddrClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddrClass::Loopback => "loopback",
            AddrClass::Private => "private",
            AddrClass::LinkLocal => "link-local",
            AddrClass::CloudMetadata => "cloud metadata",
            AddrClass::Unspecified => "unspecified",
            AddrClass::CarrierGradeNat => "carrier-grade NAT",
            AddrClass::Multicast => "multicast",
            AddrClass::Broadcast => "broadcast",
            AddrClass::Reserved => "reserved",
        })
    }
}

/// The class of a non-public address; `None` for a public one.
pub fn classify(ip: IpAddr) -> Option<AddrClass> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddrClass> {
    use AddrClass::*;
    let class = if ip == Ipv4Addr::new(169, 254, 169, 254) {
        CloudMetadata
    } else if in_v4(ip, [0, 0, 0, 0], 8) {
        Unspecified
    } else if ip.is_loopback() {
        Loopback
    } else if ip.is_private() {
        Private
    } else if ip.is_link_local() {
        LinkLocal
    } else if in_v4(ip, [100, 64, 0, 0], 10) {
        CarrierGradeNat
    } else if ip.is_broadcast() {
        Broadcast
    } else if ip.is_multicast() {
        Multicast
    } else if in_v4(ip, [240, 0, 0, 0], 4)
        || in_v4(ip, [192, 0, 0, 0], 24)
        || in_v4(ip, [198, 18, 0, 0], 15)
        || ip.is_documentation()
    {
        Reserved
    } else {
        return None;
    };
    Some(class)
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddrClass> {
    use AddrClass::*;
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    let class = if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        CloudMetadata
    } else if ip.is_unspecified() {
        Unspecified
    } else if ip.is_loopback() {
        Loopback
    } else if s[..6] == [0; 6] {
        // IPv4-compatible (deprecated): judge the embedded address, never public.
        return Some(classify_v4(embedded(s[6], s[7])).unwrap_or(Reserved));
    } else if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        // IPv4-translated (RFC 2765, ::ffff:0:a.b.c.d): as the embedded
        // IPv4 address, like IPv4-mapped.
        return classify_v4(embedded(s[6], s[7]));
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 well-known prefix: as the embedded IPv4 address.
        return classify_v4(embedded(s[6], s[7]));
    } else if s[..3] == [0x64, 0xff9b, 1] {
        // Local-use NAT64 (RFC 8215, 64:ff9b:1::/48): the operator's prefix
        // length decides where the IPv4 address sits, so every RFC 6052
        // position a /48../96 prefix allows must be public.
        return local_nat64(ip.octets());
    } else if s[..2] == [0x2001, 0] {
        // Teredo (RFC 4380): the server's and the client's (inverted) IPv4
        // addresses are embedded; a deprecated tunnel, never public itself.
        let server = embedded(s[2], s[3]);
        let client = embedded(!s[6], !s[7]);
        return Some(
            classify_v4(client)
                .or(classify_v4(server))
                .unwrap_or(Reserved),
        );
    } else if s[0] == 0x2002 {
        // 6to4: as the embedded IPv4 address.
        return classify_v4(embedded(s[1], s[2]));
    } else if s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0 {
        Private
    } else if s[0] & 0xffc0 == 0xfe80 {
        LinkLocal
    } else if s[0] & 0xff00 == 0xff00 {
        Multicast
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        Reserved
    } else {
        return None;
    };
    Some(class)
}

/// The class of a local-use NAT64 address: the first non-public IPv4
/// address among the positions of RFC 6052 for prefixes /96, /64, /56, /48
/// (the u-octet, byte 8, is skipped). Public only if all of them are.
fn local_nat64(o: [u8; 16]) -> Option<AddrClass> {
    [
        [o[12], o[13], o[14], o[15]],
        [o[9], o[10], o[11], o[12]],
        [o[7], o[9], o[10], o[11]],
        [o[6], o[7], o[9], o[10]],
    ]
    .into_iter()
    .find_map(|v4| classify_v4(Ipv4Addr::from(v4)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_are_classified() {
        use AddrClass::*;
        let cases: &[(&str, Option<AddrClass>)] = &[
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("172.32.0.1", None),
            ("100.128.0.1", None),
            ("2606:4700::1111", None),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("::1", Some(Loopback)),
            ("10.1.2.3", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("192.168.1.1", Some(Private)),
            ("fc00::1", Some(Private)),
            ("fd12:3456::1", Some(Private)),
            ("fec0::1", Some(Private)),
            ("169.254.1.1", Some(LinkLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("169.254.169.254", Some(CloudMetadata)),
            ("fd00:ec2::254", Some(CloudMetadata)),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("::", Some(Unspecified)),
            ("100.64.0.1", Some(CarrierGradeNat)),
            ("100.127.255.255", Some(CarrierGradeNat)),
            ("224.0.0.1", Some(Multicast)),
            ("ff02::1", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            ("240.0.0.1", Some(Reserved)),
            ("198.18.0.1", Some(Reserved)),
            ("192.0.2.1", Some(Reserved)),
            ("2001:db8::1", Some(Reserved)),
            // IPv4-mapped, IPv4-compatible, NAT64 and 6to4 forms.
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:10.0.0.1", Some(Private)),
            ("::ffff:169.254.169.254", Some(CloudMetadata)),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some(Loopback)),
            ("::8.8.8.8", Some(Reserved)),
            ("64:ff9b::10.0.0.1", Some(Private)),
            ("64:ff9b::8.8.8.8", None),
            ("2002:a9fe:a9fe::1", Some(CloudMetadata)),
            ("2002:0a00:0001::1", Some(Private)),
            ("2002:0808:0808::1", None),
            // IPv4-translated (RFC 2765).
            ("::ffff:0:127.0.0.1", Some(Loopback)),
            ("::ffff:0:10.1.2.3", Some(Private)),
            ("::ffff:0:169.254.169.254", Some(CloudMetadata)),
            ("::ffff:0:8.8.8.8", None),
            // Local-use NAT64 (RFC 8215): the IPv4 address of each prefix
            // length; public only when every reading is.
            ("64:ff9b:1::10.0.0.1", Some(Private)),
            ("64:ff9b:1::169.254.169.254", Some(CloudMetadata)),
            ("64:ff9b:1::8.8.8.8", Some(Unspecified)), // as a /48: 0.0.0.0
            ("64:ff9b:1:7f08:8:808:808:808", Some(Loopback)), // as a /48: 127.8.8.8
            ("64:ff9b:1:808:8:808:808:808", None),
            // Teredo: client address inverted (here 127.0.0.1 and 10.0.0.1).
            ("2001:0:808:808::80ff:fffe", Some(Loopback)),
            ("2001:0:808:808::f5ff:fffe", Some(Private)),
            ("2001:0:a00:1::f7f7:f7f7", Some(Private)),
            ("2001:0:808:808::f7f7:f7f7", Some(Reserved)),
        ];
        for (addr, expected) in cases {
            assert_eq!(classify(ip(addr)), *expected, "{addr}");
        }
    }
}

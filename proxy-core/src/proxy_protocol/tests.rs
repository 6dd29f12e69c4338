use proptest::prelude::*;

use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn headers_for_backends_are_the_specification_s_bytes() {
    let (c4, d4) = (addr("192.0.2.7:40000"), addr("10.96.0.10:80"));
    assert_eq!(
        header(ProxyProtocol::V1, c4, d4),
        b"PROXY TCP4 192.0.2.7 10.96.0.10 40000 80\r\n"
    );
    let (c6, d6) = (addr("[2001:db8::7]:40000"), addr("[fd00::10]:443"));
    assert_eq!(
        header(ProxyProtocol::V1, c6, d6),
        b"PROXY TCP6 2001:db8::7 fd00::10 40000 443\r\n"
    );
    // IPv4 clients of a dual-stack listener arrive IPv4-mapped: said as IPv4.
    let mapped = addr("[::ffff:192.0.2.7]:40000");
    let dual = addr("[::ffff:10.96.0.10]:80");
    assert_eq!(
        header(ProxyProtocol::V1, mapped, dual),
        header(ProxyProtocol::V1, c4, d4)
    );
    assert_eq!(header(ProxyProtocol::V1, c4, d6), b"PROXY UNKNOWN\r\n");

    let mut v2 = V2_SIGNATURE.to_vec();
    v2.extend([
        0x21, 0x11, 0, 12, 192, 0, 2, 7, 10, 96, 0, 10, 0x9c, 0x40, 0, 80,
    ]);
    assert_eq!(header(ProxyProtocol::V2, c4, d4), v2);
    let v2_6 = header(ProxyProtocol::V2, c6, d6);
    assert_eq!(&v2_6[12..16], &[0x21, 0x21, 0, 36]);
    assert_eq!(v2_6.len(), 16 + 36);
    // Across families: LOCAL, no addresses.
    assert_eq!(
        &header(ProxyProtocol::V2, c4, d6)[12..16],
        &[0x20, 0x00, 0, 0]
    );
}

#[test]
fn a_datagram_header_says_dgram_over_the_client_s_family() {
    let (c4, d4) = (addr("192.0.2.7:40000"), addr("10.96.0.10:53"));
    let h = datagram_header(c4, d4);
    assert_eq!(&h[..16], b"\r\n\r\n\0\r\nQUIT\n\x21\x12\x00\x0c");
    assert_eq!(&h[16..], [192, 0, 2, 7, 10, 96, 0, 10, 0x9c, 0x40, 0, 53]);
    let (c6, d6) = (addr("[2001:db8::7]:40000"), addr("[fd00::10]:53"));
    assert_eq!(datagram_header(c6, d6)[13], 0x22, "UDP over IPv6");
    assert_eq!(
        datagram_header(c4, d6)[12..14],
        [0x20, 0x00],
        "across families: LOCAL, unspecified"
    );
}

#[test]
fn what_ringlb_sends_it_reads_back() {
    for (c, d) in [
        (addr("192.0.2.7:40000"), addr("10.96.0.10:80")),
        (addr("[2001:db8::7]:1"), addr("[fd00::10]:65535")),
    ] {
        for version in [ProxyProtocol::V1, ProxyProtocol::V2] {
            let mut bytes = header(version, c, d);
            let len = bytes.len();
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(
                parse(&bytes),
                Parsed::Header {
                    len,
                    addresses: Some((c, d))
                },
                "{version:?}"
            );
        }
    }
    assert_eq!(
        parse(b"PROXY UNKNOWN\r\n"),
        Parsed::Header {
            len: 15,
            addresses: None
        }
    );
}

#[test]
fn bad_headers_are_refused_as_soon_as_they_show() {
    let bad = |b: &[u8]| parse(b);
    assert_eq!(
        bad(b"GET / HTTP/1.1\r\n"),
        Parsed::Bad(HeaderError::Malformed)
    );
    assert_eq!(
        bad(b"PROXY TCP4 1.2.3.4\r\n"),
        Parsed::Bad(HeaderError::Malformed)
    );
    assert_eq!(
        bad(b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"),
        Parsed::Bad(HeaderError::Malformed)
    );
    assert_eq!(
        bad(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n"),
        Parsed::Bad(HeaderError::Malformed)
    );
    // A v1 header's line never ends.
    let mut endless = b"PROXY TCP4 ".to_vec();
    endless.resize(200, b'1');
    assert_eq!(bad(&endless), Parsed::Bad(HeaderError::Malformed));
    // v2: oversized, wrong version, a family whose addresses do not fit.
    let mut huge = V2_SIGNATURE.to_vec();
    huge.extend([0x21, 0x11, 0xff, 0xff]);
    assert_eq!(bad(&huge), Parsed::Bad(HeaderError::TooLong));
    let mut v3 = V2_SIGNATURE.to_vec();
    v3.extend([0x31, 0x11, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
    assert_eq!(bad(&v3), Parsed::Bad(HeaderError::Malformed));
    let mut short = V2_SIGNATURE.to_vec();
    short.extend([0x21, 0x21, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
    assert_eq!(bad(&short), Parsed::Bad(HeaderError::Malformed));
    // Truncated: more is needed, and how much at most.
    assert_eq!(bad(b"PROX"), Parsed::Incomplete { at_most: V1_MAX });
    assert_eq!(
        bad(&V2_SIGNATURE[..5]),
        Parsed::Incomplete {
            at_most: V2_FIXED + V2_MAX_PAYLOAD
        }
    );
}

proptest! {
    /// Any bytes: never a panic; a header is no longer than the input and stays the same
    /// header whatever follows; an undecided input names a bound it is within.
    #[test]
    fn parsing_any_bytes_is_total_and_bounded(
        head in prop_oneof![
            Just(Vec::new()),
            Just(b"PROXY ".to_vec()),
            Just(b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\r\n".to_vec()),
            Just(V2_SIGNATURE.to_vec()),
        ],
        body in proptest::collection::vec(any::<u8>(), 0..300),
        more in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut buf = head;
        buf.extend(body);
        match parse(&buf) {
            Parsed::Header { len, addresses } => {
                prop_assert!(len <= buf.len());
                let mut longer = buf.clone();
                longer.extend(more);
                prop_assert_eq!(parse(&longer), Parsed::Header { len, addresses });
            }
            Parsed::Incomplete { at_most } => {
                prop_assert!(buf.len() < at_most);
                prop_assert!(at_most <= V2_FIXED + V2_MAX_PAYLOAD);
            }
            Parsed::Bad(_) => {}
        }
    }
}

//! The kernel's hash functions as IPVS uses them, bit for bit (64-bit kernels).
//!
//! - `hash_32` from `include/linux/hash.h` (used by `ip_vs_sh.c` and `ip_vs_dh.c`).
//! - `hsiphash` from `lib/siphash.c`: on 64-bit kernels "HalfSipHash-1-3" is really SipHash-1-3
//!   with 64-bit key words, truncated to `u32` (used by `ip_vs_mh.c`). 32-bit kernels compute a
//!   different function; we freeze the 64-bit one (golden tests in the scheduler modules).
//! - `addr_fold`: the IPv4 address, or the XOR of the four 32-bit words of an IPv6 address,
//!   in host order (`ntohl(addr_fold)`).

use std::net::IpAddr;

/// `GOLDEN_RATIO_32` of `include/linux/hash.h`.
const GOLDEN_RATIO_32: u32 = 0x61C8_8647;

/// `hash_32(val, bits)`: multiplicative hash keeping the top `bits` bits.
#[inline]
pub(crate) fn hash_32(val: u32, bits: u32) -> u32 {
    debug_assert!((1..=32).contains(&bits), "hash_32 bits out of range");
    val.wrapping_mul(GOLDEN_RATIO_32) >> (32 - bits)
}

/// `ntohl(addr_fold)` of IPVS: the v4 address, or the XOR of the four words of a v6 address.
#[inline]
pub(crate) fn addr_fold(addr: IpAddr) -> u32 {
    match addr {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            w(0) ^ w(4) ^ w(8) ^ w(12)
        }
    }
}

/// An `hsiphash_key_t` on a 64-bit kernel: two 64-bit words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HsipKey(pub(crate) u64, pub(crate) u64);

#[inline(always)]
fn sipround(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// `hsiphash(&v, sizeof(u32), key)` on a little-endian 64-bit kernel (SipHash-1-3 of the four
/// bytes of `v`, low 32 bits of the result).
#[inline]
pub(crate) fn hsiphash_u32(v: u32, key: HsipKey) -> u32 {
    let mut s = [
        0x736f_6d65_7073_6575 ^ key.0,
        0x646f_7261_6e64_6f6d ^ key.1,
        0x6c79_6765_6e65_7261 ^ key.0,
        0x7465_6462_7974_6573 ^ key.1,
    ];
    // PREAMBLE(4): b = len << 56; the four bytes are the tail (le32).
    let b: u64 = (4u64 << 56) | u64::from(v);
    s[3] ^= b;
    sipround(&mut s);
    s[0] ^= b;
    s[2] ^= 0xff;
    sipround(&mut s);
    sipround(&mut s);
    sipround(&mut s);
    (s[0] ^ s[1] ^ s[2] ^ s[3]) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hasher;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn hash_32_matches_kernel_definition() {
        assert_eq!(hash_32(0, 8), 0);
        assert_eq!(hash_32(1, 8), 0x61);
        assert_eq!(hash_32(1, 32), GOLDEN_RATIO_32);
        assert_eq!(hash_32(0xffff_ffff, 8), 0x9e);
    }

    #[test]
    fn addr_fold_is_host_order_xor() {
        assert_eq!(addr_fold(Ipv4Addr::new(10, 0, 0, 1).into()), 0x0a00_0001);
        let v6: Ipv6Addr = "2001:db8::1:0:0:1".parse().unwrap();
        assert_eq!(
            addr_fold(v6.into()),
            0x2001_0db8 ^ 0x0001_0000 ^ 0x0000_0001
        );
    }

    /// Cross-check against an independent SipHash-1-3 (`siphasher`): the kernel's 64-bit
    /// hsiphash is exactly SipHash-1-3 with the result truncated to 32 bits.
    #[test]
    fn hsiphash_is_siphash13_truncated() {
        let keys = [
            HsipKey(2_654_435_761, 2_654_435_761),
            HsipKey(2_654_446_892, 2_654_446_892),
            HsipKey(0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908),
        ];
        for key in keys {
            for v in [0u32, 1, 80, 0x0a00_0001, 0xdead_beef, u32::MAX] {
                let mut h = siphasher::sip::SipHasher13::new_with_keys(key.0, key.1);
                h.write(&v.to_le_bytes());
                assert_eq!(
                    hsiphash_u32(v, key),
                    h.finish() as u32,
                    "v={v:#x} key={key:?}"
                );
            }
        }
    }
}

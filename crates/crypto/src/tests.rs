//! The vectors of docs/protocol.md §2.5 and §6.12 both ways, key files, and malformed input.

use super::*;
use proptest::prelude::*;
use std::net::Ipv6Addr;
use wire::frame::{DataSlot, Frame, FrameReader};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn seq(start: u8) -> [u8; 32] {
    core::array::from_fn(|i| start + i as u8)
}

fn node_a() -> SecretKey {
    SecretKey::from_bytes(seq(0x00))
}

fn node_b() -> SecretKey {
    SecretKey::from_bytes(seq(0x20))
}

const PK_A: &str = "8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f";
const PK_B: &str = "358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd166254";
const ADDR_A: &str = "430:9364:d8d8:84a9:dd60:de78:c767:d361";
const ADDR_B: &str = "437:5106:5530:1589:7c53:fa73:c63e:1ddb";
const SHARED: &str = "9663aa1da97e848a914a436d04163dfbb89178f107f1b5b77ed3854203382854";
const PLAIN: &str = "01 00 00 00 61 62 63 64 65 66 67 68";
const NONCE: &str = "000102030405060708090a0b";
const RAW_DATA: &str =
    "f09f58478d1258b02d2f6021 1e22bdf3bc7bab0e4e69cc9202073692 000102030405060708090a0b";

fn frame_a_to_b() -> Vec<u8> {
    hex(&format!(
        "01000000 00002840 04309364d8d884a9dd60de78c767d361 04375106553015897c53fa73c63e1ddb {RAW_DATA}"
    ))
}

fn nonce() -> [u8; 12] {
    hex(NONCE).try_into().unwrap()
}

#[test]
fn public_keys_from_secrets() {
    assert_eq!(node_a().public_key().to_string(), PK_A);
    assert_eq!(node_b().public_key().to_string(), PK_B);
    assert_eq!(PK_A.parse::<PublicKey>().unwrap(), node_a().public_key());
    assert_eq!(
        PK_B.to_uppercase().parse::<PublicKey>().unwrap(),
        node_b().public_key()
    );
}

#[test]
fn addresses_from_public_keys() {
    let a: PublicKey = PK_A.parse().unwrap();
    assert_eq!(
        blake3::hash(a.as_bytes()).as_bytes()[..16],
        hex("c3309364d8d884a9dd60de78c767d361")[..]
    );
    assert_eq!(a.address(), ADDR_A.parse::<Ipv6Addr>().unwrap());
    assert_eq!(
        address_from_public_key(&PK_B.parse::<PublicKey>().unwrap().0),
        ADDR_B.parse::<Ipv6Addr>().unwrap()
    );
    assert_eq!(a.subnet().to_string(), "430:9364:d8d8:84a9::/64");
    assert!(
        overlay().contains_addr(ADDR_A.parse().unwrap())
            && overlay().contains_addr(ADDR_B.parse().unwrap())
    );
}

#[test]
fn public_key_parse_errors() {
    assert_eq!(
        "abc".parse::<PublicKey>(),
        Err(ParsePublicKeyError::Length(3))
    );
    let mut s = PK_A.to_string();
    s.replace_range(10..11, "g");
    assert_eq!(s.parse::<PublicKey>(), Err(ParsePublicKeyError::NotHex(10)));
    // A multi-byte character must not be mistaken for two hex digits.
    let odd = format!("é{}", &PK_A[2..]);
    assert!(odd.parse::<PublicKey>().is_err());
}

#[test]
fn shared_secret_both_directions() {
    let ab = node_a().shared_secret(&node_b().public_key()).unwrap();
    let ba = node_b().shared_secret(&node_a().public_key()).unwrap();
    assert_eq!(ab.as_bytes()[..], hex(SHARED)[..]);
    assert_eq!(ab, ba);
}

#[test]
fn low_order_public_key_is_refused() {
    assert!(node_a().shared_secret(&PublicKey([0; 32])).is_none());
}

#[test]
fn raw_data_vector_seal() {
    let c = node_a()
        .shared_secret(&node_b().public_key())
        .unwrap()
        .cipher();
    let mut buf = hex(PLAIN);
    buf.resize(buf.len() + SEAL_OVERHEAD, 0xEE);
    let n = c.seal_with_nonce(&mut buf, 12, nonce()).unwrap();
    assert_eq!(n, 40);
    assert_eq!(buf, hex(RAW_DATA));
}

#[test]
fn raw_data_vector_open() {
    let c = node_b()
        .shared_secret(&node_a().public_key())
        .unwrap()
        .cipher();
    let mut body = hex(RAW_DATA);
    assert_eq!(c.open_in_place(&mut body).unwrap(), &hex(PLAIN)[..]);
    let mut body = hex(RAW_DATA);
    let (ty, payload) = c.open_payload(&mut body).unwrap();
    assert_eq!(ty, PayloadType::L3);
    assert_eq!(payload, b"abcdefgh");
}

#[test]
fn full_frame_vector_built_in_place() {
    let a = node_a();
    let c = a.shared_secret(&node_b().public_key()).unwrap().cipher();
    let mut out = Vec::with_capacity(256);
    let slot = DataSlot::begin(&mut out);
    out.extend_from_slice(&PayloadType::L3.inner_header());
    out.extend_from_slice(b"abcdefgh");
    let start = slot.body_start();
    let plain_len = out.len() - start;
    out.resize(out.len() + SEAL_OVERHEAD, 0);
    c.seal_with_nonce(&mut out[start..], plain_len, nonce())
        .unwrap();
    slot.finish(
        &mut out,
        64,
        a.public_key().address(),
        node_b().public_key().address(),
    )
    .unwrap();
    assert_eq!(out, frame_a_to_b());
}

#[test]
fn full_frame_vector_decoded_and_opened_in_place() {
    let c = node_b()
        .shared_secret(&node_a().public_key())
        .unwrap()
        .cipher();
    let mut r = FrameReader::new();
    r.push(&frame_a_to_b());
    let Some(Frame::Data {
        hop_limit,
        src,
        dst,
        body,
    }) = r.next_frame_mut().unwrap()
    else {
        panic!("expected a data frame");
    };
    assert_eq!(hop_limit, 64);
    assert_eq!(src, ADDR_A.parse::<Ipv6Addr>().unwrap());
    assert_eq!(dst, ADDR_B.parse::<Ipv6Addr>().unwrap());
    let (ty, payload) = c.open_payload(body).unwrap();
    assert_eq!((ty, &payload[..]), (PayloadType::L3, &b"abcdefgh"[..]));
}

#[test]
fn seal_append_and_fresh_nonces() {
    let c = node_a()
        .shared_secret(&node_b().public_key())
        .unwrap()
        .cipher();
    let mut out = b"xx".to_vec();
    out.extend_from_slice(&PayloadType::Message.inner_header());
    out.extend_from_slice(b"hello");
    c.seal_append(&mut out, 2).unwrap();
    assert_eq!(out.len(), 2 + 9 + SEAL_OVERHEAD);
    let mut again = b"xx".to_vec();
    again.extend_from_slice(&PayloadType::Message.inner_header());
    again.extend_from_slice(b"hello");
    c.seal_append(&mut again, 2).unwrap();
    // Same plaintext, different nonce, so different ciphertext.
    assert_ne!(out, again);
    let n1 = u64::from_be_bytes(out[out.len() - 8..].try_into().unwrap());
    let n2 = u64::from_be_bytes(again[again.len() - 8..].try_into().unwrap());
    assert_ne!(n1, n2);
    assert_eq!(
        out[out.len() - 12..out.len() - 8],
        again[again.len() - 12..again.len() - 8]
    );
    let other = node_b()
        .shared_secret(&node_a().public_key())
        .unwrap()
        .cipher();
    let (ty, payload) = other.open_payload(&mut out[2..]).unwrap();
    assert_eq!((ty, &payload[..]), (PayloadType::Message, &b"hello"[..]));
    assert_eq!(
        c.seal_append(&mut Vec::new(), 1),
        Err(SealError::NoRoom { need: 1, have: 0 })
    );
}

#[test]
fn nonces_unique_across_threads() {
    let c = node_a()
        .shared_secret(&node_b().public_key())
        .unwrap()
        .cipher();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || {
                (0..500)
                    .map(|_| {
                        let mut b = [0u8; 4 + SEAL_OVERHEAD];
                        c.seal_in_place(&mut b, 4).unwrap();
                        <[u8; 12]>::try_from(&b[4 + TAG_LEN..]).unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<[u8; 12]> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 2000);
}

#[test]
fn seal_without_room_fails_cleanly() {
    let c = SharedSecret::from_bytes([7; 32]).cipher();
    let mut b = [1u8; 30];
    assert_eq!(
        c.seal_in_place(&mut b, 3),
        Err(SealError::NoRoom { need: 31, have: 30 })
    );
    assert_eq!(b, [1u8; 30]);
}

#[test]
fn open_rejects_bad_input() {
    let c = node_b()
        .shared_secret(&node_a().public_key())
        .unwrap()
        .cipher();
    for len in 0..28 {
        let mut b = vec![0u8; len];
        assert_eq!(c.open_in_place(&mut b), Err(OpenError::TooShort { len }));
    }
    for len in 0..MIN_BODY_LEN {
        let mut b = vec![0u8; len];
        assert_eq!(c.open_payload(&mut b), Err(OpenError::TooShort { len }));
    }
    let good = hex(RAW_DATA);
    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x01;
        assert_eq!(
            c.open_in_place(&mut b),
            Err(OpenError::Authentication),
            "byte {i}"
        );
    }
    let wrong = SharedSecret::from_bytes([9; 32]).cipher();
    assert_eq!(
        wrong.open_in_place(&mut good.clone()),
        Err(OpenError::Authentication)
    );
    // Authentic, but the inner header has version 2.
    let mut b = vec![2, 0, 0, 0, 1, 2, 3];
    b.resize(7 + SEAL_OVERHEAD, 0);
    c.seal_in_place(&mut b, 7).unwrap();
    assert_eq!(c.open_payload(&mut b), Err(OpenError::InnerVersion(2)));
}

#[test]
fn payload_types_keep_unknown_values() {
    for t in 0..=255u8 {
        assert_eq!(PayloadType::from_u8(t).to_u8(), t);
    }
    assert_eq!(PayloadType::from_u8(2), PayloadType::OobIcmp);
    assert_eq!(PayloadType::Unknown(9).inner_header(), [1, 9, 0, 0]);
}

proptest! {
    #[test]
    fn seal_open_roundtrip(key in any::<[u8; 32]>(), plain in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let c = SharedSecret::from_bytes(key).cipher();
        let mut buf = plain.clone();
        buf.resize(plain.len() + SEAL_OVERHEAD, 0);
        let n = c.seal_in_place(&mut buf, plain.len()).unwrap();
        prop_assert_eq!(n, buf.len());
        prop_assert_eq!(c.open_in_place(&mut buf).unwrap(), &plain[..]);
    }

    #[test]
    fn open_arbitrary_bytes_never_panics(key in any::<[u8; 32]>(), mut body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let c = SharedSecret::from_bytes(key).cipher();
        prop_assert!(c.open_payload(&mut body).is_err());
    }
}

// ---- Key file

#[test]
fn key_file_created_with_mode_0600_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/priv_key.bin");
    let k = SecretKey::load_or_create(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 32);
    assert_eq!(bytes[..], k.to_bytes()[..]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = SecretKey::load_or_create(&path).unwrap();
    assert_eq!(again.public_key(), k.public_key());
    // Saving over an existing key is refused.
    assert!(k.save(&path).is_err());
}

#[test]
fn save_replacing_overwrites_atomically_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys/priv_key.bin");
    let old = SecretKey::from_bytes(seq(0));
    old.save(&path).unwrap();
    // World-readable before: the replacement must not inherit that.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let new = SecretKey::from_bytes(seq(1));
    new.save_replacing(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap()[..], new.to_bytes()[..]);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("priv_key.bin")]);
    // Also where nothing was before, parent directories included.
    let fresh = dir.path().join("a/b/k.bin");
    new.save_replacing(&fresh).unwrap();
    assert_eq!(
        SecretKey::load(&fresh).unwrap().public_key(),
        new.public_key()
    );
}

#[test]
fn key_file_errors_name_the_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.bin");
    SecretKey::from_bytes(seq(0)).save(&path).unwrap();
    let e = SecretKey::from_bytes(seq(1)).save(&path).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("key file {}: ", path.display())),
        "{msg}"
    );
    assert_eq!(msg.matches("(os error").count(), 1, "{msg}");
    // Printed as a chain, the cause does not come back a second time.
    assert!(std::error::Error::source(&e).is_none());
}

#[test]
fn key_file_reads_first_32_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.bin");
    let mut content = seq(0).to_vec();
    content.extend_from_slice(b"trailing junk");
    std::fs::write(&path, &content).unwrap();
    assert_eq!(
        SecretKey::load(&path).unwrap().public_key().to_string(),
        PK_A
    );
}

#[test]
fn short_key_file_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.bin");
    std::fs::write(&path, [1u8; 31]).unwrap();
    let e = SecretKey::load_or_create(&path).unwrap_err();
    assert!(matches!(e.kind, KeyFileErrorKind::TooShort { len: 31 }));
    let msg = e.to_string();
    assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
    assert!(msg.contains("31"), "{msg}");
    // The short file was left alone.
    assert_eq!(std::fs::read(&path).unwrap().len(), 31);
}

#[test]
fn unreadable_key_file_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be: open succeeds on Linux, read fails.
    let e = SecretKey::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(e.kind, KeyFileErrorKind::Io(_)));
    assert!(e.to_string().contains(&*dir.path().to_string_lossy()));
}

#[test]
fn secret_debug_is_redacted() {
    let s = format!("{:?}", node_a());
    assert!(!s.contains("000102"));
    assert!(s.contains(PK_A));
}

//! Opening arbitrary bytes never panics (and never succeeds without the key); sealing the same
//! bytes as plaintext opens back to them.
#![no_main]

use crypto::{SharedSecret, SEAL_OVERHEAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let c = SharedSecret::from_bytes([0x42; 32]).cipher();
    let mut body = data.to_vec();
    let _ = c.open_in_place(&mut body);
    let mut body = data.to_vec();
    let _ = c.open_payload(&mut body);

    let mut buf = data.to_vec();
    buf.resize(data.len() + SEAL_OVERHEAD, 0);
    c.seal_in_place(&mut buf, data.len()).unwrap();
    assert_eq!(c.open_in_place(&mut buf).unwrap(), data);
});

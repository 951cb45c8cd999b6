//! Every TLV decoder on arbitrary bodies: never panics; whatever decodes and passes the send
//! policy re-encodes to bytes that decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::babel::{Hello, Ihu, RouteRequest, SeqNoRequest, Tlv, Update};

fuzz_target!(|data: &[u8]| {
    let Some((&tlv_type, body)) = data.split_first() else {
        return;
    };
    let _ = Hello::parse(body);
    let _ = Ihu::parse(body);
    let _ = Update::parse(body);
    let _ = RouteRequest::parse(body);
    let _ = SeqNoRequest::parse(body);
    if let Ok(tlv) = Tlv::decode(tlv_type, body) {
        let mut out = Vec::new();
        if tlv.encode(&mut out).is_ok() {
            assert_eq!(out.len(), tlv.wire_len());
            assert_eq!(Tlv::decode(out[0], &out[2..]), Ok(tlv));
        }
    }
});

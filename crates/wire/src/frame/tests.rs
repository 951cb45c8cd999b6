//! Frame tests: the docs/protocol.md §3.8/§4.10 vectors both ways, the four tests for the data
//! header, stream chunking, and malformed input.

use super::*;
use crate::babel::{Hello, Ihu, Metric, Prefix, RouteRequest, SeqNo, SeqNoRequest};
use crate::testutil::{hex, rid, subnet, update, RID_HEX};
use proptest::prelude::*;

/// (TLV, complete frame) pairs from docs/protocol.md §4.10.
fn control_vectors() -> Vec<(Tlv, Vec<u8>)> {
    vec![
        (
            Tlv::Hello(Hello {
                flags: 0x8000,
                seqno: SeqNo(0x1234),
                interval: 2000,
            }),
            hex("01 01 00 00 | 2a 03 00 08 | 04 06 | 80 00 12 34 07 d0"),
        ),
        (
            Tlv::Ihu(Ihu {
                rx_cost: Metric(25),
                interval: 6000,
                address: None,
            }),
            hex("01 01 00 00 | 2a 03 00 08 | 05 06 | 00 00 00 19 17 70"),
        ),
        (
            Tlv::Update(update()),
            hex(&format!(
                "01 01 00 00 2a 03 00 3c 08 3a 02 00 40 00 75 30 00 07 00 00
                 04 30 93 64 d8 d8 84 a9 {RID_HEX}"
            )),
        ),
        (
            Tlv::RouteRequest(RouteRequest {
                generation: 0,
                prefix: Prefix::V6(subnet()),
            }),
            hex("01 01 00 00 2a 03 00 0d 09 0b 00 02 40 04 30 93 64 d8 d8 84 a9"),
        ),
        (
            Tlv::SeqNoRequest(SeqNoRequest {
                seqno: SeqNo(8),
                hop_count: 64,
                router_id: rid(),
                prefix: Prefix::V6(subnet()),
            }),
            hex(&format!(
                "01 01 00 00 2a 03 00 38 0a 36 02 40 00 08 40 00 {RID_HEX} 04 30 93 64 d8 d8 84 a9"
            )),
        ),
    ]
}

const SRC: &str = "430:9364:d8d8:84a9:dd60:de78:c767:d361";
const DST: &str = "437:5106:5530:1589:7c53:fa73:c63e:1ddb";
const RAW_DATA: &str =
    "f09f58478d1258b02d2f6021 1e22bdf3bc7bab0e4e69cc9202073692 000102030405060708090a0b";

/// The full A→B data frame of docs/protocol.md §3.8.
fn data_vector() -> Vec<u8> {
    hex(&format!(
        "01000000 00002840 04309364d8d884a9dd60de78c767d361 04375106553015897c53fa73c63e1ddb {RAW_DATA}"
    ))
}

/// Decodes a whole stream through a fresh decoder, fed at once.
fn decode_all(bytes: &[u8]) -> Result<Vec<Frame<Vec<u8>>>, StreamError> {
    let mut d = StreamDecoder::new();
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let Decoded { consumed, frame } = d.decode(&bytes[pos..])?;
        pos += consumed;
        match frame {
            Some(f) => out.push(owned(f)),
            None => break,
        }
    }
    assert_eq!(pos, bytes.len(), "complete input must be consumed entirely");
    Ok(out)
}

fn owned(f: Frame<&[u8]>) -> Frame<Vec<u8>> {
    match f {
        Frame::Data {
            hop_limit,
            src,
            dst,
            body,
        } => Frame::Data {
            hop_limit,
            src,
            dst,
            body: body.to_vec(),
        },
        Frame::Control(t) => Frame::Control(t),
        Frame::Skipped(s) => Frame::Skipped(s),
    }
}

/// Decodes through a [`FrameReader`], pushing `bytes` in chunks of the given sizes (cycled).
fn decode_chunked(bytes: &[u8], chunks: &[usize]) -> (Vec<Frame<Vec<u8>>>, Option<StreamError>) {
    decode_chunked_with(FrameReader::with_capacity(0), bytes, chunks)
}

fn decode_chunked_with(
    mut r: FrameReader,
    bytes: &[u8],
    chunks: &[usize],
) -> (Vec<Frame<Vec<u8>>>, Option<StreamError>) {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < bytes.len() {
        let c = chunks[i % chunks.len()].max(1);
        i += 1;
        let end = (pos + c).min(bytes.len());
        pos += r.push(&bytes[pos..end]);
        loop {
            match r.next_frame() {
                Ok(Some(f)) => out.push(owned(f)),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

#[test]
fn control_vectors_encode() {
    for (tlv, frame) in control_vectors() {
        let mut out = vec![0xEE];
        encode_control(&mut out, &tlv).unwrap();
        assert_eq!(&out[1..], &frame[..], "{tlv:?}");
        assert_eq!(control_frame_len(&tlv), frame.len());
    }
}

#[test]
fn control_vectors_decode() {
    for (tlv, frame) in control_vectors() {
        assert_eq!(decode_all(&frame).unwrap(), vec![Frame::Control(tlv)]);
    }
}

#[test]
fn data_vector_encode() {
    let mut out = Vec::new();
    let raw = hex(RAW_DATA);
    encode_data(
        &mut out,
        64,
        SRC.parse().unwrap(),
        DST.parse().unwrap(),
        &raw,
    )
    .unwrap();
    assert_eq!(out, data_vector());
}

#[test]
fn data_vector_encode_in_place() {
    let mut out = b"prefix".to_vec();
    let slot = DataSlot::begin(&mut out);
    assert_eq!(slot.body_start(), 6 + 40);
    out.extend_from_slice(&hex(RAW_DATA));
    let n = slot
        .finish(&mut out, 64, SRC.parse().unwrap(), DST.parse().unwrap())
        .unwrap();
    assert_eq!(n, data_vector().len());
    assert_eq!(&out[6..], &data_vector()[..]);
}

#[test]
fn data_vector_decode() {
    let frames = decode_all(&data_vector()).unwrap();
    assert_eq!(
        frames,
        vec![Frame::Data {
            hop_limit: 64,
            src: SRC.parse().unwrap(),
            dst: DST.parse().unwrap(),
            body: hex(RAW_DATA),
        }]
    );
}

#[test]
fn data_body_too_long_leaves_buffer_unchanged() {
    let mut out = vec![1, 2, 3];
    let big = vec![0u8; MAX_DATA_BODY + 1];
    let e = encode_data(
        &mut out,
        1,
        SRC.parse().unwrap(),
        DST.parse().unwrap(),
        &big,
    );
    assert_eq!(e, Err(EncodeError::BodyTooLong { len: 65536 }));
    assert_eq!(out, [1, 2, 3]);

    let slot = DataSlot::begin(&mut out);
    out.resize(out.len() + MAX_DATA_BODY + 1, 7);
    let e = slot.finish(&mut out, 1, SRC.parse().unwrap(), DST.parse().unwrap());
    assert_eq!(e, Err(EncodeError::BodyTooLong { len: 65536 }));
    assert_eq!(out, [1, 2, 3]);

    let slot = DataSlot::begin(&mut out);
    out.truncate(10);
    let e = slot.finish(&mut out, 1, SRC.parse().unwrap(), DST.parse().unwrap());
    assert_eq!(e, Err(EncodeError::SlotTruncated));
    assert_eq!(out, [1, 2, 3]);
}

#[test]
fn max_body_is_accepted() {
    let mut out = Vec::new();
    let big = vec![9u8; MAX_DATA_BODY];
    encode_data(
        &mut out,
        2,
        SRC.parse().unwrap(),
        DST.parse().unwrap(),
        &big,
    )
    .unwrap();
    assert_eq!(out.len(), MAX_FRAME_LEN);
    let (frames, err) = decode_chunked(&out, &[4096]);
    assert_eq!(err, None);
    assert!(matches!(&frames[..], [Frame::Data { body, .. }] if body.len() == MAX_DATA_BODY));
}

#[test]
fn encode_refuses_dangerous_tlv_without_writing() {
    let mut out = vec![5];
    let rr = Tlv::RouteRequest(RouteRequest {
        generation: 255,
        prefix: Prefix::V6(subnet()),
    });
    assert_eq!(
        encode_control(&mut out, &rr),
        Err(EncodeError::Tlv(
            crate::babel::EncodeError::GenerationTooHigh { generation: 255 }
        ))
    );
    assert_eq!(out, [5]);
}

// The four tests for the data header (view read, view write, repr parse, repr emit).

const DATA_HEADER: &str =
    "00 00 28 40 04309364d8d884a9dd60de78c767d361 04375106553015897c53fa73c63e1ddb";

fn data_repr() -> DataRepr {
    DataRepr {
        hop_limit: 64,
        src: SRC.parse().unwrap(),
        dst: DST.parse().unwrap(),
        body_len: 40,
    }
}

#[test]
fn data_header_deconstruct() {
    let b = hex(DATA_HEADER);
    let h = DataHeader::new_checked(&b[..]).unwrap();
    assert_eq!(h.body_len(), 40);
    assert_eq!(h.hop_limit(), 64);
    assert_eq!(h.src(), SRC.parse::<Ipv6Addr>().unwrap());
    assert_eq!(h.dst(), DST.parse::<Ipv6Addr>().unwrap());
    assert_eq!(DataHeader::new_checked(&b[..35]), Err(Truncated));
}

#[test]
fn data_header_construct() {
    let mut b = vec![0xFFu8; 36];
    let mut h = DataHeader::new_checked(&mut b[..]).unwrap();
    h.set_body_len(40);
    h.set_hop_limit(64);
    h.set_src(SRC.parse().unwrap());
    h.set_dst(DST.parse().unwrap());
    assert_eq!(b, hex(DATA_HEADER));
}

#[test]
fn data_header_parse() {
    let b = hex(DATA_HEADER);
    assert_eq!(
        DataRepr::parse(&DataHeader::new_checked(&b[..]).unwrap()),
        data_repr()
    );
}

#[test]
fn data_header_emit() {
    let mut b = vec![0xAAu8; 36];
    let repr = data_repr();
    assert_eq!(repr.buffer_len(), 36);
    repr.emit(&mut DataHeader::new_checked(&mut b[..]).unwrap());
    assert_eq!(b, hex(DATA_HEADER));
}

#[test]
fn outer_and_babel_header_views() {
    let b = hex("01 01 00 00 2a 03 01 02");
    let o = OuterHeader::new_checked(&b[..4]).unwrap();
    assert_eq!((o.version(), o.packet_type()), (1, 1));
    let h = BabelHeader::new_checked(&b[4..]).unwrap();
    assert_eq!((h.magic(), h.version(), h.body_len()), (42, 3, 0x0102));
    let mut w = [0xFFu8; 8];
    OuterHeader::new_checked(&mut w[..4])
        .unwrap()
        .fill(TYPE_CONTROL);
    BabelHeader::new_checked(&mut w[4..]).unwrap().fill(0x0102);
    assert_eq!(&w[..], &b[..]);
    assert_eq!(OuterHeader::new_checked(&b[..3]), Err(Truncated));
    assert_eq!(BabelHeader::new_checked(&b[..3]), Err(Truncated));
}

// Stream behaviour.

fn all_vectors_stream() -> (Vec<u8>, Vec<Frame<Vec<u8>>>) {
    let mut bytes = Vec::new();
    let mut frames = Vec::new();
    for (tlv, f) in control_vectors() {
        bytes.extend_from_slice(&f);
        frames.push(Frame::Control(tlv));
        bytes.extend_from_slice(&data_vector());
        frames.push(owned(
            decode_all(&data_vector()).unwrap().remove(0).as_ref(),
        ));
    }
    (bytes, frames)
}

impl Frame<Vec<u8>> {
    fn as_ref(&self) -> Frame<&[u8]> {
        match self {
            Frame::Data {
                hop_limit,
                src,
                dst,
                body,
            } => Frame::Data {
                hop_limit: *hop_limit,
                src: *src,
                dst: *dst,
                body: &body[..],
            },
            Frame::Control(t) => Frame::Control(*t),
            Frame::Skipped(s) => Frame::Skipped(*s),
        }
    }
}

#[test]
fn byte_by_byte_equals_all_at_once() {
    let (bytes, frames) = all_vectors_stream();
    assert_eq!(decode_all(&bytes).unwrap(), frames);
    assert_eq!(decode_chunked(&bytes, &[1]), (frames.clone(), None));
    assert_eq!(decode_chunked(&bytes, &[3, 7, 64, 2]), (frames, None));
}

#[test]
fn fatal_outer_errors_stick() {
    let mut d = StreamDecoder::new();
    assert_eq!(
        d.decode(&hex("02 01 00 00 2a 03 00 00")),
        Err(StreamError::UnknownVersion(2))
    );
    // Poisoned: even a valid packet is refused afterwards.
    assert_eq!(
        d.decode(&control_vectors()[0].1),
        Err(StreamError::UnknownVersion(2))
    );
    let mut d = StreamDecoder::new();
    assert_eq!(
        d.decode(&hex("01 02 00 00")),
        Err(StreamError::UnknownPacketType(2))
    );
}

fn nothing(consumed: usize) -> Decoded<&'static [u8]> {
    Decoded {
        consumed,
        frame: None,
    }
}

#[test]
fn incomplete_headers_wait() {
    let mut d = StreamDecoder::new();
    let v = data_vector();
    for cut in [0, 3, 4, 39, 40, v.len() - 1] {
        assert_eq!(d.decode(&v[..cut]).unwrap(), nothing(0), "cut {cut}");
    }
    let c = &control_vectors()[2].1;
    for cut in [0, 4, 7] {
        assert_eq!(d.decode(&c[..cut]).unwrap(), nothing(0), "cut {cut}");
    }
    // The headers are consumed once present; the TLV waits for its body.
    assert_eq!(d.decode(&c[..9]).unwrap(), nothing(8));
    assert!(!d.at_boundary());
}

#[test]
fn bad_babel_header_is_skipped_and_stream_stays_in_step() {
    let mut bytes = hex("01 01 00 00 2b 03 00 05 01 02 03 04 05");
    bytes.extend_from_slice(&hex("01 01 00 00 2a 02 00 03 09 09 09"));
    bytes.extend_from_slice(&data_vector());
    let frames = decode_all(&bytes).unwrap();
    assert_eq!(frames[0], Frame::Skipped(Skip::BadMagic(0x2b)));
    assert_eq!(frames[1], Frame::Skipped(Skip::BadVersion(2)));
    assert!(matches!(frames[2], Frame::Data { hop_limit: 64, .. }));
    assert_eq!(frames.len(), 3);
    assert_eq!(decode_chunked(&bytes, &[1]).0, frames);
}

#[test]
fn unknown_tlv_then_data_stays_in_step() {
    // mycelium desyncs here for good (docs/protocol.md §10.2); we skip by length.
    let mut bytes = hex("01 01 00 00 2a 03 00 05 63 03 aa bb cc");
    bytes.extend_from_slice(&data_vector());
    let frames = decode_all(&bytes).unwrap();
    assert_eq!(
        frames[0],
        Frame::Skipped(Skip::Tlv(crate::babel::DecodeError::UnknownTlv(0x63)))
    );
    assert!(matches!(frames[1], Frame::Data { .. }));
}

#[test]
fn several_tlvs_in_one_babel_packet_all_decode() {
    let mut body = Vec::new();
    let (hello, ihu) = (control_vectors()[0].0, control_vectors()[1].0);
    hello.encode(&mut body).unwrap();
    body.extend_from_slice(&[0x77, 0x01, 0x00]); // unknown TLV in between
    ihu.encode(&mut body).unwrap();
    let mut bytes = hex("01 01 00 00 2a 03");
    bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(&control_vectors()[3].1);
    let frames = decode_all(&bytes).unwrap();
    assert_eq!(
        frames,
        vec![
            Frame::Control(hello),
            Frame::Skipped(Skip::Tlv(crate::babel::DecodeError::UnknownTlv(0x77))),
            Frame::Control(ihu),
            Frame::Control(control_vectors()[3].0),
        ]
    );
}

#[test]
fn tlv_overrunning_its_packet_skips_rest_of_packet() {
    // Babel length 5, but the TLV claims 6 body bytes: the 5 bytes are discarded.
    let mut bytes = hex("01 01 00 00 2a 03 00 05 04 06 80 00 00");
    bytes.extend_from_slice(&control_vectors()[1].1);
    let frames = decode_all(&bytes).unwrap();
    assert_eq!(
        frames[0],
        Frame::Skipped(Skip::TlvOverrun {
            tlv_type: Some(4),
            remaining: 5
        })
    );
    assert_eq!(frames[1], Frame::Control(control_vectors()[1].0));
    // A lone trailing byte cannot hold a TLV header.
    let mut bytes = hex("01 01 00 00 2a 03 00 09");
    bytes.extend_from_slice(&control_vectors()[0].1[8..]);
    bytes.push(0);
    let frames = decode_all(&bytes).unwrap();
    assert_eq!(frames[0], Frame::Control(control_vectors()[0].0));
    assert_eq!(
        frames[1],
        Frame::Skipped(Skip::TlvOverrun {
            tlv_type: None,
            remaining: 1
        })
    );
}

#[test]
fn short_tlv_body_is_skipped_not_overread() {
    // Hello with a 4-byte body (mycelium reads past it and can panic).
    let mut bytes = hex("01 01 00 00 2a 03 00 06 04 04 80 00 00 01");
    bytes.extend_from_slice(&data_vector());
    let frames = decode_all(&bytes).unwrap();
    assert_eq!(
        frames[0],
        Frame::Skipped(Skip::Tlv(crate::babel::DecodeError::Truncated {
            tlv_type: 4,
            need: 6,
            have: 4
        }))
    );
    assert!(matches!(frames[1], Frame::Data { .. }));
}

#[test]
fn empty_babel_packet_yields_nothing() {
    let mut bytes = hex("01 01 00 00 2a 03 00 00");
    bytes.extend_from_slice(&control_vectors()[0].1);
    assert_eq!(
        decode_all(&bytes).unwrap(),
        vec![Frame::Control(control_vectors()[0].0)]
    );
}

#[test]
fn mutable_frames_allow_in_place_work() {
    let mut r = FrameReader::new();
    r.push(&data_vector());
    match r.next_frame_mut().unwrap() {
        Some(Frame::Data { body, .. }) => body.fill(0),
        other => panic!("expected data, got {other:?}"),
    }
    assert_eq!(r.next_frame().unwrap(), None);
    assert_eq!(r.buffered(), 0);
}

#[test]
fn reader_compacts_and_never_grows() {
    let mut r = FrameReader::with_capacity(0);
    let cap = r.read_space().len();
    assert_eq!(cap, MAX_FRAME_LEN);
    let (bytes, frames) = all_vectors_stream();
    let mut got = Vec::new();
    for _ in 0..2000 {
        let mut pos = 0;
        while pos < bytes.len() {
            pos += r.push(&bytes[pos..]);
            while let Some(f) = r.next_frame().unwrap() {
                got.push(owned(f));
            }
        }
    }
    assert_eq!(got.len(), frames.len() * 2000);
    assert_eq!(&got[..frames.len()], &frames[..]);
    assert_eq!(r.buffered(), 0);
}

#[test]
fn growable_reader_grows_only_for_a_frame_that_does_not_fit() {
    let mut r = FrameReader::growable(0);
    assert_eq!(r.capacity(), FrameReader::MIN_CAPACITY);
    // Control frames and small data frames stream through the small buffer.
    let (bytes, frames) = all_vectors_stream();
    for _ in 0..200 {
        let mut pos = 0;
        while pos < bytes.len() {
            pos += r.push(&bytes[pos..]);
            let mut n = 0;
            while r.next_frame().unwrap().is_some() {
                n += 1;
            }
            assert!(n <= frames.len());
        }
    }
    assert_eq!(r.capacity(), FrameReader::MIN_CAPACITY);
    // A maximum-size data frame makes it grow, to exactly one maximum frame at most.
    let src: Ipv6Addr = SRC.parse().unwrap();
    let mut big = Vec::new();
    encode_data(&mut big, 64, src, src, &vec![7; MAX_DATA_BODY]).unwrap();
    let mut pos = 0;
    let mut got = 0;
    while pos < big.len() {
        pos += r.push(&big[pos..]);
        while let Some(f) = r.next_frame().unwrap() {
            assert!(matches!(f, Frame::Data { body, .. } if body.len() == MAX_DATA_BODY));
            got += 1;
        }
    }
    assert_eq!(got, 1);
    assert_eq!(r.capacity(), MAX_FRAME_LEN);
    // The caller shrinks it back; a resize never drops buffered bytes.
    r.push(&big[..100]);
    r.resize(0);
    assert_eq!(r.capacity(), FrameReader::MIN_CAPACITY);
    assert_eq!(r.buffered(), 100);
    let mut pos = 100;
    while pos < big.len() {
        pos += r.push(&big[pos..]);
        while r.next_frame().unwrap().is_some() {
            got += 1;
        }
    }
    assert_eq!(got, 2);
    r.resize(4 * MAX_FRAME_LEN);
    assert_eq!(r.capacity(), 4 * MAX_FRAME_LEN);
    assert_eq!(r.buffered(), 0);
}

fn arb_frame() -> impl Strategy<Value = (Vec<u8>, Frame<Vec<u8>>)> {
    let data = (
        any::<u8>(),
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        proptest::collection::vec(any::<u8>(), 0..3000),
    )
        .prop_map(|(hop, s, d, body)| {
            let (src, dst) = (Ipv6Addr::from(s), Ipv6Addr::from(d));
            let mut out = Vec::new();
            encode_data(&mut out, hop, src, dst, &body).unwrap();
            (
                out,
                Frame::Data {
                    hop_limit: hop,
                    src,
                    dst,
                    body,
                },
            )
        });
    let control = (0..5usize).prop_map(|i| {
        let (t, b) = control_vectors().swap_remove(i);
        (b, Frame::Control(t))
    });
    prop_oneof![data, control]
}

proptest! {
    #[test]
    fn random_chunking_gives_same_frames(
        units in proptest::collection::vec(arb_frame(), 0..20),
        chunks in proptest::collection::vec(1usize..2000, 1..10),
    ) {
        let bytes: Vec<u8> = units.iter().flat_map(|(b, _)| b.clone()).collect();
        let expected: Vec<_> = units.into_iter().map(|(_, f)| f).collect();
        prop_assert_eq!(decode_chunked(&bytes, &chunks), (expected, None));
    }

    #[test]
    fn random_chunking_through_a_growable_reader(
        units in proptest::collection::vec(arb_frame(), 0..20),
        chunks in proptest::collection::vec(1usize..2000, 1..10),
        initial in 0usize..4000,
    ) {
        let bytes: Vec<u8> = units.iter().flat_map(|(b, _)| b.clone()).collect();
        let expected: Vec<_> = units.into_iter().map(|(_, f)| f).collect();
        let r = FrameReader::growable(initial);
        prop_assert_eq!(decode_chunked_with(r, &bytes, &chunks), (expected, None));
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        chunks in proptest::collection::vec(1usize..64, 1..6),
    ) {
        // Start with a valid control header so the walk reaches the TLV decoders often.
        let mut s = hex("01 01 00 00 2a 03");
        s.extend_from_slice(&bytes);
        let (a, ea) = decode_chunked(&s, &chunks);
        let (b, eb) = decode_chunked(&s, &[s.len()]);
        prop_assert_eq!(a, b);
        prop_assert_eq!(ea, eb);
    }
}

#[test]
fn data_header_written_in_place_matches_the_vector() {
    let body = hex(RAW_DATA);
    let mut buf = vec![0xAA; DATA_FRAME_OVERHEAD + body.len()];
    buf[DATA_FRAME_OVERHEAD..].copy_from_slice(&body);
    let (head, _) = buf.split_at_mut(DATA_FRAME_OVERHEAD);
    write_data_header(
        head,
        64,
        SRC.parse().unwrap(),
        DST.parse().unwrap(),
        body.len(),
    )
    .unwrap();
    assert_eq!(buf, data_vector());
}

#[test]
fn data_header_in_place_refuses_what_does_not_fit() {
    let mut short = [0x55u8; DATA_FRAME_OVERHEAD - 1];
    let src: Ipv6Addr = SRC.parse().unwrap();
    assert!(matches!(
        write_data_header(&mut short, 64, src, src, 10),
        Err(EncodeError::SlotTruncated)
    ));
    assert!(short.iter().all(|&b| b == 0x55));
    let mut head = [0x55u8; DATA_FRAME_OVERHEAD];
    assert!(matches!(
        write_data_header(&mut head, 64, src, src, MAX_DATA_BODY + 1),
        Err(EncodeError::BodyTooLong { .. })
    ));
    assert!(head.iter().all(|&b| b == 0x55));
}

#[test]
fn bodies_located_by_range_are_found_in_the_buffer_afterwards() {
    let mut stream = Vec::new();
    let src: Ipv6Addr = SRC.parse().unwrap();
    for i in 0..3u8 {
        encode_data(&mut stream, 64, src, src, &[i; 100]).unwrap();
    }
    // A partial frame after them stays buffered and does not disturb the ranges.
    let mut tail = Vec::new();
    encode_data(&mut tail, 64, src, src, &[9; 50]).unwrap();
    stream.extend_from_slice(&tail[..20]);
    let mut r = FrameReader::new();
    r.push(&stream);
    let mut ranges = Vec::new();
    while let Some(f) = r.next_frame_at().unwrap() {
        let Frame::Data {
            body, hop_limit, ..
        } = f
        else {
            panic!("expected data, got {f:?}");
        };
        assert_eq!(hop_limit, 64);
        // Opened (here: marked) in place while later frames are decoded.
        r.buffer_mut()[body.start + 1] = 0xEE;
        ranges.push(body);
    }
    assert_eq!(ranges.len(), 3);
    assert_eq!(r.buffered(), 20);
    for (i, range) in ranges.iter().enumerate() {
        let body = &r.buffer_mut()[range.clone()];
        assert_eq!(body.len(), 100);
        assert_eq!(body[0], i as u8);
        assert_eq!(body[1], 0xEE);
        assert!(body[2..].iter().all(|&b| b == i as u8));
    }
}

//! The peer-link stream decoder on arbitrary bytes in arbitrary chunks: it must never panic, and
//! the chunking must not change what it yields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::frame::{Decoded, Frame, FrameReader, StreamDecoder};

type Owned = Frame<Vec<u8>>;

fn owned(f: Frame<&[u8]>) -> Owned {
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

fuzz_target!(|input: (Vec<u16>, Vec<u8>)| {
    let (chunks, bytes) = input;

    // All at once.
    let mut d = StreamDecoder::new();
    let mut whole = Vec::new();
    let mut pos = 0;
    let whole_err = loop {
        match d.decode(&bytes[pos..]) {
            Ok(Decoded { consumed, frame }) => {
                pos += consumed;
                match frame {
                    Some(f) => whole.push(owned(f)),
                    None => break None,
                }
            }
            Err(e) => break Some(e),
        }
    };

    // In chunks, through the bounded reader.
    let mut r = FrameReader::with_capacity(0);
    let mut chunked = Vec::new();
    let mut chunked_err = None;
    let mut at = 0;
    let mut i = 0;
    'feed: while at < bytes.len() {
        let c = chunks.get(i % chunks.len().max(1)).copied().unwrap_or(4096).max(1);
        i += 1;
        let end = (at + usize::from(c)).min(bytes.len());
        at += r.push(&bytes[at..end]);
        loop {
            match r.next_frame() {
                Ok(Some(f)) => chunked.push(owned(f)),
                Ok(None) => break,
                Err(e) => {
                    chunked_err = Some(e);
                    break 'feed;
                }
            }
        }
    }

    assert_eq!(whole, chunked);
    assert_eq!(whole_err, chunked_err);
});

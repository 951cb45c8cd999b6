use super::*;
use std::net::Ipv6Addr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn data(body_len: usize, fill: u8) -> Vec<u8> {
    let mut v = Vec::new();
    let src: Ipv6Addr = "400::1".parse().unwrap();
    let dst: Ipv6Addr = "400::2".parse().unwrap();
    wire::frame::encode_data(&mut v, 64, src, dst, &vec![fill; body_len]).unwrap();
    v
}

fn control() -> Vec<u8> {
    let mut v = Vec::new();
    let tlv = wire::babel::Tlv::Hello(wire::babel::Hello {
        flags: 0,
        seqno: wire::babel::SeqNo(7),
        interval: 400,
    });
    wire::frame::encode_control(&mut v, &tlv).unwrap();
    v
}

/// Splits a byte stream of frames into frames.
fn frames(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let len = frame_len(b).expect("a frame");
        out.push(b[..len].to_vec());
        b = &b[len..];
    }
    out
}

#[test]
fn frame_lengths_come_from_the_headers() {
    assert_eq!(frame_len(&data(0, 0)), Some(40));
    assert_eq!(frame_len(&data(1400, 0)), Some(1440));
    let c = control();
    assert_eq!(frame_len(&c), Some(c.len()));
    // Wrong version, unknown type, too short: not a frame.
    let mut bad = data(10, 0);
    bad[0] = 2;
    assert_eq!(frame_len(&bad), None);
    bad[0] = 1;
    bad[1] = 9;
    assert_eq!(frame_len(&bad), None);
    assert_eq!(frame_len(&c[..7]), None);
}

#[test]
fn the_cursor_finds_boundaries_however_the_bytes_are_cut() {
    let mut stream = Vec::new();
    stream.extend(control());
    stream.extend(data(3000, 1));
    stream.extend(data(0, 2));
    let ends: Vec<usize> = {
        let mut at = 0;
        frames(&stream)
            .iter()
            .map(|f| {
                at += f.len();
                at
            })
            .collect()
    };
    for cut in [1, 3, 7, 8, 9, 100, 4096] {
        let mut c = FrameCursor::default();
        let mut at = 0;
        for piece in stream.chunks(cut) {
            c.advance(piece);
            at += piece.len();
            assert_eq!(c.at_boundary(), ends.contains(&at), "cut {cut} at {at}");
        }
    }
    let mut c = FrameCursor::default();
    c.advance(&control()[..3]);
    assert_eq!(c.to_boundary(), None);
    let mut c = FrameCursor::default();
    c.advance(&data(100, 0)[..10]);
    assert_eq!(c.to_boundary(), Some(130));
    // Garbage: no boundary ever again.
    let mut c = FrameCursor::default();
    c.advance(&[9; 20]);
    assert!(!c.at_boundary());
    c.advance(&control());
    assert!(!c.at_boundary());
}

/// Two endpoints on loopback, one link between them: (dialled side, accepted side).
async fn pair() -> (
    QuicLink,
    QuicLink,
    Arc<QuicStats>,
    Arc<QuicStats>,
    Arc<Gate>,
) {
    let id_a = RouterId::new([1; 32], [1; 6]);
    let id_b = RouterId::new([2; 32], [2; 6]);
    let (sa, sb) = (Arc::<QuicStats>::default(), Arc::<QuicStats>::default());
    let a = QuicEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &id_a,
        QuicCongestion::default(),
        sa.clone(),
    )
    .unwrap();
    let b = Arc::new(
        QuicEndpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            &id_b,
            QuicCongestion::default(),
            sb.clone(),
        )
        .unwrap(),
    );
    let target = b.local_addr().unwrap();
    let gate = Gate::new(crate::gate::GateLimits::default(), Arc::default());
    let (tx, mut rx) = mpsc::channel(1);
    let (stop_tx, stop) = watch::channel(false);
    std::mem::forget(stop_tx);
    tokio::spawn(b.clone().accept_loop(gate.clone(), tx, stop));
    let mut dialled = a.dial(target).await.unwrap();
    // The accepted side appears once its stream carries a first frame.
    dialled.send.write_all(&control()).await.unwrap();
    let (accepted, _) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    // The endpoints live as long as the test's runtime.
    std::mem::forget(a);
    (dialled, accepted, sa, sb, gate)
}

/// Reads until `want` bytes came (bounded in time).
async fn read_bytes(r: &mut QuicReader, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(Duration::from_secs(10), async {
        while got.len() < want {
            let n = r.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the frames arrive");
    got
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

#[tokio::test]
async fn frames_go_as_datagrams_where_they_fit_and_on_the_stream_otherwise() {
    let (dialled, accepted, sa, sb, gate) = pair().await;
    assert_eq!(gate.stats.proven.load(Relaxed), 1);
    assert_eq!(sb.accepted.load(Relaxed), 1);
    let (mut dr, mut dw) = dialled.split();
    let (mut ar, mut aw) = accepted.split();
    let sent = vec![data(100, 1), data(60_000, 2), control(), data(200, 3)];
    let mut bytes = Vec::new();
    for f in &sent {
        bytes.extend_from_slice(f);
    }
    dw.write_all(&bytes).await.unwrap();
    // The accepted side reads the proving frame first, then the four in some order: datagrams
    // and the stream are not ordered with each other, and each frame arrives whole.
    let first = control();
    let got = read_bytes(&mut ar, first.len() + bytes.len()).await;
    let got = frames(&got);
    assert_eq!(got[0], first);
    assert_eq!(sorted(got[1..].to_vec()), sorted(sent));
    assert_eq!(sa.datagrams_tx.load(Relaxed), 2);
    assert_eq!(sa.stream_fallbacks.load(Relaxed), 1);
    assert_eq!(sb.datagrams_rx.load(Relaxed), 2);
    // The other way.
    let back = data(500, 9);
    aw.write_all(&back).await.unwrap();
    assert_eq!(read_bytes(&mut dr, back.len()).await, back);
    assert_eq!(sb.datagrams_tx.load(Relaxed), 1);
}

#[tokio::test]
async fn garbage_datagrams_are_counted_and_dropped_and_the_link_goes_on() {
    let (dialled, accepted, _sa, sb, _gate) = pair().await;
    let conn = dialled.connection();
    let (_dr, mut dw) = dialled.split();
    let (mut ar, _aw) = accepted.split();
    let first = read_bytes(&mut ar, control().len()).await;
    assert_eq!(first, control());
    // Not a frame; a frame with a wrong length; a frame and a half.
    let mut half = data(10, 1);
    half.extend_from_slice(&data(10, 1)[..20]);
    let mut short = data(50, 1);
    short.truncate(60);
    for d in [vec![0xAB; 300], short, half] {
        conn.send_datagram(Bytes::from(d)).unwrap();
    }
    let good = data(64, 5);
    dw.write_all(&good).await.unwrap();
    assert_eq!(read_bytes(&mut ar, good.len()).await, good);
    tokio::time::timeout(Duration::from_secs(10), async {
        while sb.datagrams_malformed.load(Relaxed) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("three malformed datagrams counted");
}

#[tokio::test]
async fn a_peer_cannot_open_more_streams() {
    let (dialled, _accepted, _sa, _sb, _gate) = pair().await;
    let conn = dialled.connection();
    // The one stream allowed is in use; a second bidirectional or any unidirectional stream
    // is never granted.
    let more = tokio::time::timeout(Duration::from_millis(500), conn.open_bi()).await;
    assert!(more.is_err(), "a second stream was opened");
    let uni = tokio::time::timeout(Duration::from_millis(500), conn.open_uni()).await;
    assert!(uni.is_err(), "a unidirectional stream was opened");
}

#[tokio::test]
async fn frames_cut_anywhere_go_whole_on_the_stream_in_order() {
    let (dialled, accepted, sa, _sb, _gate) = pair().await;
    let (_dr, mut dw) = dialled.split();
    let (mut ar, _aw) = accepted.split();
    let first = read_bytes(&mut ar, control().len()).await;
    assert_eq!(first, control());
    let sent = vec![data(100, 1), control(), data(3000, 2), data(10, 3)];
    let bytes: Vec<u8> = sent.concat();
    // Cut into pieces that split headers (3 and 5 bytes) and bodies alike.
    let mut at = 0;
    for (i, _) in std::iter::repeat(()).enumerate() {
        if at == bytes.len() {
            break;
        }
        let n = [3, 5, 7, 1000][i % 4].min(bytes.len() - at);
        dw.write_all(&bytes[at..at + n]).await.unwrap();
        at += n;
    }
    dw.flush().await.unwrap();
    let got = read_bytes(&mut ar, bytes.len()).await;
    // Every frame arrives whole; the ones that came in pieces went on the stream, in order (the
    // last one came whole in one piece and may go as a datagram).
    let got = frames(&got);
    assert_eq!(sorted(got.clone()), sorted(sent.clone()));
    let streamed: Vec<_> = got.into_iter().filter(|f| f != &sent[3]).collect();
    assert_eq!(streamed, sent[..3].to_vec());
    assert!(sa.datagrams_tx.load(Relaxed) <= 1);
}

#[test]
fn the_datagram_backlog_is_two_milliseconds_at_the_windows_rate_within_the_buffer() {
    // 500 KB window over 20 ms: 25 MB/s (200 Mbit/s), 2 ms of it is 50 KB.
    assert_eq!(backlog_at(500_000, Duration::from_millis(20)), 50_000);
    // A slow path: the floor.
    assert_eq!(backlog_at(14_720, Duration::from_millis(80)), 16 * 1024);
    // A fast one, or no RTT yet: the whole buffer.
    assert_eq!(
        backlog_at(50_000_000, Duration::from_millis(5)),
        DATAGRAM_SEND_BUFFER
    );
    assert_eq!(backlog_at(1, Duration::ZERO), DATAGRAM_SEND_BUFFER);
}

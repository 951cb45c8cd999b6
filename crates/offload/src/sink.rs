//! Where [`split`](crate::split) writes its segments.

/// A destination for segments: hands out one buffer of exactly `len` bytes per segment.
///
/// [`split`](crate::split) writes every byte of the buffer it is given (it never relies on the
/// buffer's previous contents), so implementations need not zero it. Returning `None` stops the
/// split with [`SplitError::SinkFull`](crate::SplitError::SinkFull); the segments already handed
/// out stay valid.
///
/// The node implements this over its outgoing frame buffers (returning the slice after the frame
/// headroom), so each segment is written once, straight where it will be sealed and sent.
pub trait SegmentSink {
    fn segment(&mut self, len: usize) -> Option<&mut [u8]>;

    /// A super-packet (`hdr`, and the packet after it) before it is split: return true to take
    /// it whole instead, and `segment` is not called for it. By default every one is split.
    fn take_whole(&mut self, _hdr: &wire::virtio::VirtioNetHdr, _packet: &[u8]) -> bool {
        false
    }
}

impl<S: SegmentSink + ?Sized> SegmentSink for &mut S {
    fn segment(&mut self, len: usize) -> Option<&mut [u8]> {
        (**self).segment(len)
    }

    fn take_whole(&mut self, hdr: &wire::virtio::VirtioNetHdr, packet: &[u8]) -> bool {
        (**self).take_whole(hdr, packet)
    }
}

/// A reusable arena of segments: one byte buffer and a list of ranges, each segment preceded by
/// `headroom` reserved bytes the caller may fill later (e.g. frame and crypto headers).
///
/// [`Segments::clear`] keeps the memory; the buffer grows only when a batch needs more than any
/// before it, and new bytes are zeroed only then, so steady-state use allocates and zero-fills
/// nothing.
#[derive(Debug, Default, Clone)]
pub struct Segments {
    buf: Vec<u8>,
    /// Start (after headroom) and end of each segment in `buf`.
    spans: Vec<(usize, usize)>,
    used: usize,
    headroom: usize,
    limit: Option<usize>,
}

impl Segments {
    /// An empty arena without headroom.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty arena reserving `headroom` bytes before each segment.
    pub fn with_headroom(headroom: usize) -> Self {
        Segments {
            headroom,
            ..Self::default()
        }
    }

    /// Caps the number of segments; `segment` returns `None` beyond it. For tests of sink
    /// exhaustion and for callers with a fixed downstream capacity.
    pub fn set_limit(&mut self, limit: Option<usize>) {
        self.limit = limit;
    }

    /// Forgets all segments, keeping the memory.
    pub fn clear(&mut self) {
        self.spans.clear();
        self.used = 0;
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn headroom(&self) -> usize {
        self.headroom
    }

    /// Segment `i` (without headroom).
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.spans.get(i).map(|&(s, e)| &self.buf[s..e])
    }

    /// Segment `i` preceded by its headroom.
    pub fn get_with_headroom_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        let h = self.headroom;
        self.spans.get(i).map(|&(s, e)| &mut self.buf[s - h..e])
    }

    /// The segments in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.spans.iter().map(|&(s, e)| &self.buf[s..e])
    }

    /// The segments in order, mutable; with `with_headroom` each slice starts `headroom` bytes
    /// before the segment.
    pub fn iter_mut(&mut self, with_headroom: bool) -> impl Iterator<Item = &mut [u8]> + '_ {
        let h = if with_headroom { self.headroom } else { 0 };
        let mut rest: &mut [u8] = &mut self.buf[..];
        let mut consumed = 0;
        self.spans.iter().map(move |&(s, e)| {
            // Spans are increasing and disjoint (headroom included), so we can peel them off.
            let tail = core::mem::take(&mut rest);
            let (_, tail) = tail.split_at_mut(s - h - consumed);
            let (seg, tail) = tail.split_at_mut(e - (s - h));
            rest = tail;
            consumed = e;
            seg
        })
    }
}

impl SegmentSink for Segments {
    fn segment(&mut self, len: usize) -> Option<&mut [u8]> {
        if self.limit.is_some_and(|l| self.spans.len() >= l) {
            return None;
        }
        let start = self.used + self.headroom;
        let end = start + len;
        if end > self.buf.len() {
            let grown = end.max(self.buf.len() * 2);
            self.buf.resize(grown, 0);
        }
        self.spans.push((start, end));
        self.used = end;
        Some(&mut self.buf[start..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_reuse_memory_after_clear() {
        let mut s = Segments::with_headroom(4);
        s.segment(10).unwrap().fill(1);
        s.segment(3).unwrap().fill(2);
        assert_eq!(s.len(), 2);
        assert_eq!(s.get(0).unwrap(), &[1; 10]);
        assert_eq!(s.get(1).unwrap(), &[2; 3]);
        let cap = s.buf.capacity();
        let ptr = s.buf.as_ptr();
        s.clear();
        assert!(s.is_empty());
        s.segment(12).unwrap().fill(3);
        assert_eq!(s.buf.capacity(), cap);
        assert_eq!(s.buf.as_ptr(), ptr);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![&[3u8; 12][..]]);
    }

    #[test]
    fn headroom_precedes_each_segment() {
        let mut s = Segments::with_headroom(2);
        s.segment(3).unwrap().copy_from_slice(b"abc");
        s.segment(2).unwrap().copy_from_slice(b"de");
        for seg in s.iter_mut(true) {
            seg[..2].copy_from_slice(b"HH");
        }
        assert_eq!(s.get_with_headroom_mut(0).unwrap(), b"HHabc");
        assert_eq!(s.get_with_headroom_mut(1).unwrap(), b"HHde");
        let plain: Vec<Vec<u8>> = s.iter_mut(false).map(|x| x.to_vec()).collect();
        assert_eq!(plain, vec![b"abc".to_vec(), b"de".to_vec()]);
    }

    #[test]
    fn limit_refuses_extra_segments() {
        let mut s = Segments::new();
        s.set_limit(Some(1));
        assert!(s.segment(1).is_some());
        assert!(s.segment(1).is_none());
    }
}

//! The frames a first attempt keeps for the retry.

use bytes::Bytes;

/// Kept frames, in order: the first inline, since most request bodies are a single frame (a
/// vector would cost an allocation on the connection's thread and a free on the caller's), the
/// others in a vector allocated at the second frame.
#[derive(Default)]
pub(super) struct Kept {
    first: Option<Bytes>,
    more: Vec<Bytes>,
    /// Bytes kept in all.
    len: usize,
}

impl Kept {
    pub(super) fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        match self.first {
            None => self.first = Some(chunk),
            Some(_) => self.more.push(chunk),
        }
    }

    /// The `index`th kept frame.
    pub(super) fn get(&self, index: usize) -> Option<&Bytes> {
        match index.checked_sub(1) {
            None => self.first.as_ref(),
            Some(index) => self.more.get(index),
        }
    }

    /// How many frames are kept.
    pub(super) fn frames(&self) -> usize {
        usize::from(self.first.is_some()) + self.more.len()
    }

    /// How many bytes are kept.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The bytes of the frames from the `from`th on.
    pub(super) fn len_from(&self, from: usize) -> u64 {
        (from..self.frames())
            .filter_map(|i| self.get(i))
            .map(|chunk| chunk.len() as u64)
            .sum()
    }

    /// Whether nothing is kept and nothing is allocated.
    #[cfg(test)]
    pub(super) fn is_freed(&self) -> bool {
        self.first.is_none() && self.more.capacity() == 0 && self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_back_in_order() {
        let mut kept = Kept::default();
        assert_eq!((kept.frames(), kept.len()), (0, 0));
        assert!(kept.get(0).is_none());
        for chunk in ["ab", "cde", "f"] {
            kept.push(Bytes::from_static(chunk.as_bytes()));
        }
        assert_eq!((kept.frames(), kept.len(), kept.len_from(1)), (3, 6, 4));
        let frames: Vec<_> = (0..4).map(|i| kept.get(i).cloned()).collect();
        assert_eq!(
            frames,
            [
                Some("ab".into()),
                Some("cde".into()),
                Some("f".into()),
                None
            ]
        );
        kept = Kept::default();
        assert!(kept.is_freed());
    }
}

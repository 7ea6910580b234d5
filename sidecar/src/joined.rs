//! [`Joined`]: a body's bytes gathered as its frames arrive, for the two readers that
//! need a body whole (the request body read for its `model`, the usage tap's JSON
//! response). A body of one frame, the usual shape of a JSON message, is held as it is
//! rather than copied; a second frame starts a joined copy.

use bytes::Bytes;

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Joined {
    /// The body while it is one frame.
    first: Option<Bytes>,
    /// The body once a second frame came.
    rest: Vec<u8>,
}

impl Joined {
    /// Adds the next frame.
    pub(crate) fn push(&mut self, frame: Bytes) {
        match self.first.take() {
            None if self.rest.is_empty() => self.first = Some(frame),
            held => {
                if let Some(held) = held {
                    self.rest.extend_from_slice(&held);
                }
                self.rest.extend_from_slice(&frame);
            }
        }
    }

    /// The bytes so far.
    pub(crate) fn as_slice(&self) -> &[u8] {
        self.first.as_deref().unwrap_or(&self.rest)
    }

    /// How many bytes so far.
    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Drops all but the last `keep` bytes (a held frame is sliced, not copied).
    pub(crate) fn keep_last(&mut self, keep: usize) {
        let cut = self.len().saturating_sub(keep);
        match &mut self.first {
            Some(first) => *first = first.slice(cut..),
            None => {
                self.rest.drain(..cut);
            }
        }
    }

    /// The bytes, without a copy.
    pub(crate) fn into_bytes(self) -> Bytes {
        self.first.unwrap_or_else(|| Bytes::from(self.rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_frame_is_held_and_several_are_joined() {
        let one = Bytes::from_static(b"{\"model\":\"m\"}");
        let mut joined = Joined::default();
        joined.push(one.clone());
        assert_eq!(joined.as_slice().as_ptr(), one.as_ptr(), "held, not copied");
        assert_eq!(joined.into_bytes().as_ptr(), one.as_ptr());

        let mut joined = Joined::default();
        for frame in ["", "ab", "", "c", "d"] {
            joined.push(Bytes::from_static(frame.as_bytes()));
        }
        assert_eq!(joined.as_slice(), b"abcd");
        assert_eq!(joined.len(), 4);
        assert_eq!(joined.into_bytes(), "abcd");
        assert_eq!(Joined::default().into_bytes(), "");
    }

    #[test]
    fn keep_last_trims_a_held_frame_and_a_joined_copy_alike() {
        let mut held = Joined::default();
        held.push(Bytes::from_static(b"0123456789"));
        held.keep_last(3);
        assert_eq!(held.as_slice(), b"789");
        let mut joined = Joined::default();
        joined.push(Bytes::from_static(b"01234"));
        joined.push(Bytes::from_static(b"56789"));
        joined.keep_last(3);
        assert_eq!(joined.as_slice(), b"789");
        joined.keep_last(10);
        assert_eq!(joined.as_slice(), b"789");
    }
}

//! The ports a pod's containers declare, as a set with constant-time lookups, and the
//! free-port suggestion of a port-collision refusal.
//!
//! A pod can declare tens of thousands of ports: the set is built once per pod, so the
//! suggestion costs one pass over the ports plus at most one scan of the port range, never
//! a pass over the ports per candidate.

/// A set of port numbers: one bit per port, 8 KiB whatever the pod declares.
#[derive(Clone)]
pub(crate) struct PortSet {
    words: [u64; 1024],
}

impl Default for PortSet {
    fn default() -> Self {
        Self { words: [0; 1024] }
    }
}

impl PortSet {
    pub(crate) fn insert(&mut self, port: u16) {
        let (word, bit) = split(port);
        if let Some(w) = self.words.get_mut(word) {
            *w |= bit;
        }
    }

    pub(crate) fn contains(&self, port: u16) -> bool {
        let (word, bit) = split(port);
        self.words.get(word).is_some_and(|w| w & bit != 0)
    }
}

fn split(port: u16) -> (usize, u64) {
    (usize::from(port / 64), 1 << (port % 64))
}

impl FromIterator<u16> for PortSet {
    fn from_iter<I: IntoIterator<Item = u16>>(ports: I) -> Self {
        let mut set = Self::default();
        for port in ports {
            set.insert(port);
        }
        set
    }
}

/// The first port above `port` that is not `taken`, wrapping around to the unprivileged
/// range (1024 and up) below it; `None` when every one is taken.
pub(crate) fn free_port(taken: &PortSet, port: u16) -> Option<u16> {
    (port.saturating_add(1)..=u16::MAX)
        .chain(1024..port)
        .find(|p| !taken.contains(*p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_holds_exactly_what_was_inserted() {
        let set: PortSet = [0, 63, 64, 8080, u16::MAX].into_iter().collect();
        for port in [0, 63, 64, 8080, u16::MAX] {
            assert!(set.contains(port), "{port}");
        }
        for port in [1, 62, 65, 8079, 8081, u16::MAX - 1] {
            assert!(!set.contains(port), "{port}");
        }
    }

    #[test]
    fn suggestion_is_the_next_free_port_above() {
        let taken: PortSet = [8080, 8081, 8082, 9090].into_iter().collect();
        assert_eq!(free_port(&taken, 8080), Some(8083));
        assert_eq!(free_port(&taken, 9090), Some(9091));
    }

    #[test]
    fn suggestion_wraps_to_1024_past_the_top() {
        let taken: PortSet = [65534, 65535, 1024].into_iter().collect();
        assert_eq!(free_port(&taken, 65534), Some(1025));
        assert_eq!(free_port(&taken, u16::MAX), Some(1025));
    }

    #[test]
    fn no_suggestion_when_every_port_is_taken() {
        let taken: PortSet = (1024..=u16::MAX).collect();
        assert_eq!(free_port(&taken, 8080), None);
        // The wrap-around stops at 1024, even when a lower port is free.
        let taken: PortSet = (1024..=u16::MAX).filter(|p| *p != 80).collect();
        assert_eq!(free_port(&taken, 8080), None);
    }
}

//! The probe each synthetic message carries in its text.
//!
//! `"<run tag> <sender> <n> <intended ns>|xxxx…"`: the run it belongs to
//! (messages of an earlier run that a server re-delivers are ignored), the
//! sender's index, the message's number within its flow (sender → that
//! recipient, 0-based and gap-free, which is what makes loss, duplicates
//! and reordering countable exactly) and the instant it was *scheduled* to
//! be sent, in nanoseconds since the run's epoch (sender and recipient live
//! in the same process, so latency never compares two clocks). Padding
//! brings the text to the payload size.

/// What a received text says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub sender: u32,
    pub n: u64,
    pub intended_ns: u64,
}

/// Builds the text of one message: the header padded to `payload` bytes
/// (a payload smaller than the header gets the header alone).
pub fn encode(tag: &str, probe: Probe, payload: usize) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(payload.max(48));
    let _ = write!(
        s,
        "{tag} {} {} {}|",
        probe.sender, probe.n, probe.intended_ns
    );
    let pad = payload.saturating_sub(s.len());
    s.extend(std::iter::repeat_n('x', pad));
    s
}

/// Reads the probe of a text from run `tag`; `None` for anything else.
pub fn decode(tag: &str, text: &str) -> Option<Probe> {
    let rest = text.strip_prefix(tag)?.strip_prefix(' ')?;
    let header = &rest[..rest.find('|')?];
    let mut parts = header.split(' ');
    let sender = parts.next()?.parse().ok()?;
    let n = parts.next()?.parse().ok()?;
    let intended_ns = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some(Probe {
        sender,
        n,
        intended_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_the_requested_size() {
        let p = Probe {
            sender: 12,
            n: 345,
            intended_ns: 6_789_000,
        };
        for size in [1, 40, 64, 4096] {
            let text = encode("lgab12", p, size);
            assert_eq!(text.len(), size.max(text.find('|').unwrap() + 1));
            assert_eq!(decode("lgab12", &text), Some(p));
        }
    }

    #[test]
    fn other_runs_and_garbage_are_not_probes() {
        let p = Probe {
            sender: 1,
            n: 2,
            intended_ns: 3,
        };
        assert_eq!(decode("lgother", &encode("lgab12", p, 64)), None);
        assert_eq!(decode("lgab12", "lgab12 1 2|"), None);
        assert_eq!(decode("lgab12", "lgab12 1 2 x|"), None);
        assert_eq!(decode("lgab12", "hello"), None);
    }
}

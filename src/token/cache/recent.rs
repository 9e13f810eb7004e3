//! The header values of the last few tokens the cache made, by generation: what a refused
//! request's recovery compares a fresh token with, so that the hot path keeps no copy of the
//! token it sent (it keeps the generation alone).

use http::HeaderValue;

/// How many tokens are remembered. A refusal is looked up as its response arrives, and while
/// tokens keep being refused the cache makes at most two per forced-refresh interval (5 s by
/// default; otherwise one a day): eight cover a request in flight for some 20 s of refusals.
/// One refused later than that is compared by generation alone, and retried once.
const REMEMBERED: usize = 8;

/// A ring of `(generation, header value)`, the newest at `next - 1`.
#[derive(Default)]
pub(super) struct RecentTokens {
    ring: [Option<(u64, HeaderValue)>; REMEMBERED],
    next: usize,
}

impl RecentTokens {
    /// Remembers the token of `generation`, forgetting the oldest.
    pub(super) fn record(&mut self, generation: u64, header: &HeaderValue) {
        self.ring[self.next] = Some((generation, header.clone()));
        self.next = (self.next + 1) % REMEMBERED;
    }

    /// The header value of the token of `generation`, if it is among the last ones made.
    pub(super) fn header_of(&self, generation: u64) -> Option<HeaderValue> {
        self.ring
            .iter()
            .flatten()
            .find(|(g, _)| *g == generation)
            .map(|(_, header)| header.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_tokens_made_are_found_by_generation_and_older_ones_forgotten() {
        let mut recent = RecentTokens::default();
        let header = |g: u64| HeaderValue::from_str(&format!("Bearer t{g}")).unwrap();
        assert_eq!(recent.header_of(1), None);
        for g in 1..=REMEMBERED as u64 + 2 {
            recent.record(g, &header(g));
        }
        assert_eq!(recent.header_of(1), None);
        assert_eq!(recent.header_of(2), None);
        for g in 3..=REMEMBERED as u64 + 2 {
            assert_eq!(recent.header_of(g), Some(header(g)), "generation {g}");
        }
    }
}

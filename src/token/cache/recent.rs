//! The header values of the last few tokens the cache made, by generation: what a refused
//! request's recovery compares a fresh token with, so that the hot path keeps no copy of the
//! token it sent (it keeps the generation alone).

use http::HeaderValue;

/// How many runs of tokens with the same text are remembered. A fetch that returns the text the
/// cache had already (a token endpoint may answer a forced refresh with the token it gave before)
/// extends the newest run instead of taking a slot, so that refusals no new token can fix, however
/// often they refresh (the forced-refresh interval may be set to zero), never push the refused
/// text out. A refused text is forgotten only once eight other texts came after it; if it then
/// came back, a late refusal of it would be retried once with it.
const REMEMBERED: usize = 8;

/// Consecutive generations whose tokens had the same text.
struct Run {
    first: u64,
    last: u64,
    header: HeaderValue,
}

/// A ring of runs, the newest at `next - 1`.
#[derive(Default)]
pub(super) struct RecentTokens {
    ring: [Option<Run>; REMEMBERED],
    next: usize,
}

impl RecentTokens {
    /// Remembers the token of `generation` (one more than the last one recorded, as the cache
    /// numbers its entries), forgetting the oldest run if its text is new.
    pub(super) fn record(&mut self, generation: u64, header: &HeaderValue) {
        let newest = (self.next + REMEMBERED - 1) % REMEMBERED;
        if let Some(run) = &mut self.ring[newest] {
            if run.last + 1 == generation && run.header == *header {
                run.last = generation;
                return;
            }
        }
        self.ring[self.next] = Some(Run {
            first: generation,
            last: generation,
            header: header.clone(),
        });
        self.next = (self.next + 1) % REMEMBERED;
    }

    /// The header value of the token of `generation`, if it is among the last ones made.
    pub(super) fn header_of(&self, generation: u64) -> Option<HeaderValue> {
        self.ring
            .iter()
            .flatten()
            .find(|run| (run.first..=run.last).contains(&generation))
            .map(|run| run.header.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {text}")).unwrap()
    }

    #[test]
    fn the_last_texts_made_are_found_by_generation_and_older_ones_forgotten() {
        let mut recent = RecentTokens::default();
        assert_eq!(recent.header_of(1), None);
        for g in 1..=REMEMBERED as u64 + 2 {
            recent.record(g, &header(&format!("t{g}")));
        }
        assert_eq!(recent.header_of(1), None);
        assert_eq!(recent.header_of(2), None);
        for g in 3..=REMEMBERED as u64 + 2 {
            assert_eq!(recent.header_of(g), Some(header(&format!("t{g}"))), "{g}");
        }
    }

    #[test]
    fn a_text_made_again_and_again_takes_one_slot() {
        let mut recent = RecentTokens::default();
        recent.record(1, &header("a"));
        // A thousand forced refreshes that all returned the same text.
        for g in 2..=1001 {
            recent.record(g, &header("same"));
        }
        assert_eq!(recent.header_of(1), Some(header("a")));
        assert_eq!(recent.header_of(2), Some(header("same")));
        assert_eq!(recent.header_of(1001), Some(header("same")));
        assert_eq!(recent.header_of(1002), None);
        // The same text after a gap in the generations (none is skipped by the cache, but a run
        // only ever covers generations it was told of) starts a run of its own.
        recent.record(1003, &header("same"));
        assert_eq!(recent.header_of(1002), None);
        assert_eq!(recent.header_of(1003), Some(header("same")));
    }
}

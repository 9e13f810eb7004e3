//! A seeded PRNG (splitmix64): every choice a scenario makes comes from its seed.

/// The parts of a scenario that draw from streams of their own, so that the order in which
/// tasks happen to run never shifts the choices of another part.
#[derive(Clone, Copy)]
pub enum Stream {
    /// The token source, one stream per call.
    Source = 1,
    /// The API's answer, one stream per attempt.
    Response = 2,
}

/// splitmix64 (Steele, Lea and Flood, 2014): a few lines, and well enough spread for test input.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The stream of `part` for its `index`th draw (a source call, an attempt).
    pub fn stream(seed: u64, part: Stream, index: u64) -> Self {
        let mut mixer = Rng(seed ^ (part as u64).rotate_left(56));
        let base = mixer.next_u64();
        Rng(base ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        debug_assert!(lo <= hi, "empty range {lo}..={hi}");
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// One of `choices`, by weight.
    pub fn pick<T: Copy>(&mut self, choices: &[(u32, T)]) -> T {
        let total: u64 = choices.iter().map(|&(w, _)| u64::from(w)).sum();
        let mut roll = self.next_u64() % total.max(1);
        for &(weight, choice) in choices {
            if roll < u64::from(weight) {
                return choice;
            }
            roll -= u64::from(weight);
        }
        choices.last().expect("pick from no choices").1
    }
}

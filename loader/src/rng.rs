//! A small deterministic PRNG (SplitMix64) and the few distributions the generator and the key
//! sampler need. Not cryptographic; chosen because one 64-bit state makes a fresh, independent
//! stream per row cheap, which is what keeps generation identical whatever the thread count.

/// SplitMix64 (Steele, Lea, Flood 2014): passes BigCrush, one add and a mix per draw.
#[derive(Clone, Debug)]
pub(crate) struct Rng {
    state: u64,
    /// The second value of the last Box-Muller pair.
    spare_gaussian: Option<f64>,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijection on u64 that mixes every bit.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed,
            spare_gaussian: None,
        }
    }

    /// An independent stream for row `index` of stream `stream` under `seed`.
    pub fn for_row(seed: u64, stream: u64, index: u64) -> Self {
        Self::new(mix64(mix64(seed ^ stream.wrapping_mul(GOLDEN)) ^ index))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-64 * n, negligible
    /// here). `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Standard normal (Box-Muller, both values of each pair used).
    pub fn gaussian(&mut self) -> f64 {
        if let Some(z) = self.spare_gaussian.take() {
            return z;
        }
        // 1 - unit() is in (0, 1], so the logarithm is finite.
        let radius = (-2.0 * (1.0 - self.unit()).ln()).sqrt();
        let angle = std::f64::consts::TAU * self.unit();
        self.spare_gaussian = Some(radius * angle.sin());
        radius * angle.cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_deterministic_and_roughly_normal() {
        let mut a = Rng::for_row(7, 1, 42);
        let mut b = Rng::for_row(7, 1, 42);
        assert_eq!(a.next_u64(), b.next_u64());
        assert_ne!(
            Rng::for_row(7, 1, 43).next_u64(),
            Rng::for_row(7, 2, 42).next_u64()
        );
        let mut rng = Rng::new(1);
        let n = 20_000;
        let samples: Vec<f64> = (0..n).map(|_| rng.gaussian()).collect();
        let mean = samples.iter().sum::<f64>() / n as f64;
        let variance = samples.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.05, "{mean}");
        assert!((variance - 1.0).abs() < 0.05, "{variance}");
        assert!((0..1000).all(|_| rng.below(3) < 3));
    }
}

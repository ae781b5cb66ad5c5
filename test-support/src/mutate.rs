//! A fixed-seed mutation generator for the no-panic tests (no dependency: a xorshift64 and
//! five mutations).

/// xorshift64 (Marsaglia 2003): deterministic, so a failure names its iteration.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Values that break length fields: empty, one, off-by-one around the input, the maxima.
fn length_value(rng: &mut XorShift, input_len: usize) -> u32 {
    match rng.below(8) {
        0 => 0,
        1 => 1,
        2 => input_len as u32 + 1,
        3 => (input_len as u32).saturating_sub(1),
        4 => 0xff,
        5 => 0xffff,
        6 => 0xff_ffff,
        _ => rng.below(64) as u32,
    }
}

/// One to three mutations of `input`: bit flips, truncation, insertion of random bytes,
/// deletion of a range, or a 1-, 2- or 3-byte big-endian length field overwritten (at a random
/// offset, half the time in the first 8 bytes where the headers are).
pub fn mutate(rng: &mut XorShift, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => {
                let n = rng.below(v.len() + 1);
                v.truncate(n);
            }
            2 => {
                let at = rng.below(v.len() + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                v.splice(at..at, bytes);
            }
            3 if !v.is_empty() => {
                let at = rng.below(v.len());
                let n = 1 + rng.below(16);
                v.drain(at..(at + n).min(v.len()));
            }
            _ if !v.is_empty() => {
                let width = 1 + rng.below(3);
                let at = if rng.below(2) == 0 {
                    rng.below(v.len().min(8))
                } else {
                    rng.below(v.len())
                };
                let value = length_value(rng, v.len()).to_be_bytes();
                for (k, b) in value[4 - width..].iter().enumerate() {
                    if let Some(slot) = v.get_mut(at + k) {
                        *slot = *b;
                    }
                }
            }
            _ => v.push(rng.next_u64() as u8),
        }
    }
    v
}

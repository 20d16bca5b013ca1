
pub struct Primes {
    checked: u64,
}

#[forkworker::worker]
impl Primes {
    pub fn new() -> Self {
        Primes { checked: 0 }
    }

    /// Every prime in `start..end`.
    pub fn sieve(&self, start: u64, end: u64) -> Vec<u64> {
        (start..end).filter(|&n| Self::test(n)).collect()
    }

    pub fn is_prime(&mut self, n: u64) -> bool {
        self.checked += 1;
        Self::test(n)
    }

    pub fn primes_among(&self, numbers: &[u64]) -> Vec<u64> {
        numbers.iter().copied().filter(|&n| Self::test(n)).collect()
    }

    pub fn describe(&self, label: &str) -> String {
        format!("{label}: {} checked", self.checked)
    }

    /// Moves as bytes, both ways.
    pub fn checksum(&self, data: Vec<u8>) -> Vec<u8> {
        vec![data.iter().fold(0u8, |a, b| a.wrapping_add(*b))]
    }

    pub fn ping(&self) {}

    pub fn setup(&mut self) {
        self.checked = 0;
    }

    pub fn check_environment(&self) -> Vec<String> {
        Vec::new()
    }

    fn test(n: u64) -> bool {
        n >= 2 && (2..n).take_while(|d| d * d <= n).all(|d| n % d != 0)
    }
}

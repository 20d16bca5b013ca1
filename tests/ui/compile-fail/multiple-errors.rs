// Three bad methods, three errors, one compile.
pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn workers(&self) -> usize {
        4
    }

    pub async fn sieve(&self, end: u64) -> Vec<u64> {
        vec![end]
    }

    pub fn fill(&self, out: &mut Vec<u64>) {
        out.push(2);
    }

    pub fn fine(&self, n: u64) -> bool {
        n > 1
    }
}

fn main() {}

pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub unsafe fn raw(&self, address: usize) -> u8 {
        address as u8
    }
}

fn main() {}

pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn forever(&self) -> ! {
        loop {}
    }
}

fn main() {}

#![allow(non_snake_case)]

pub struct Primes;

#[forkworker::worker]
impl Primes {
    pub fn is_prime(&self, n: u64) -> bool {
        n > 1
    }

    pub fn isPrime(&self, n: u64) -> bool {
        n > 1
    }
}

fn main() {}

// The example of the README: the generated mediator, enums and `Worker` impl type-check, and
// the parts that need no worker process work.
#![deny(warnings)]

use forkworker::prelude::*;

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

    pub fn checksum(&self, data: Vec<u8>) -> Vec<u8> {
        vec![data.iter().fold(0u8, |a, b| a.wrapping_add(*b))]
    }

    pub fn ping(&self) {}

    fn helper(&self) -> u64 {
        self.checked
    }

    pub fn setup(&mut self) {
        self.checked = self.helper();
    }

    pub fn teardown(&mut self) {}

    pub fn check_environment(&self) -> Vec<String> {
        vec![]
    }

    fn test(n: u64) -> bool {
        n >= 2 && (2..n).take_while(|d| d * d <= n).all(|d| n % d != 0)
    }
}

// Proxies type-check without being called (calling needs worker processes).
#[allow(dead_code)]
fn proxies(m: &mut PrimesMediator) -> Result<(), CallError> {
    let _: Handle<Vec<u64>> = m.sieve(1, 2)?;
    let _: Handle<bool> = m.is_prime(7)?;
    let _: Handle<Vec<u64>> = m.primes_among(&[1, 2, 3])?;
    let _: Handle<String> = m.describe("x")?;
    let _: Handle<Vec<u8>> = m.checksum(vec![1, 2])?;
    let _: Handle<()> = m.ping()?;
    Ok(())
}

fn main() {
    assert_eq!(
        <Primes as Worker>::METHODS,
        [
            "sieve",
            "is_prime",
            "primes_among",
            "describe",
            "checksum",
            "ping"
        ]
    );

    let mut primes = PrimesMediator::new("PrimeNumbers", Primes::new());
    primes.workers(4);
    assert_eq!(primes.inline().sieve(1, 10), [2, 3, 5, 7]);
    assert!(primes.inline().is_prime(13));

    // Arguments as the proxy encodes them (a tuple of borrows) decode as the owned tuple.
    let numbers: &[u64] = &[4, 5, 6];
    let bytes = forkworker::__private::encode_to_vec(&(&numbers,)).unwrap();
    match <Primes as Worker>::decode_args(2, &bytes).unwrap() {
        PrimesArgs::PrimesAmong { numbers } => assert_eq!(numbers, [4, 5, 6]),
        _ => unreachable!(),
    }
    let bytes = forkworker::__private::encode_to_vec(&(&"label",)).unwrap();
    assert!(matches!(
        <Primes as Worker>::decode_args(3, &bytes).unwrap(),
        PrimesArgs::Describe { label } if label == "label"
    ));
    let data = vec![1u8, 2, 3];
    let bytes = forkworker::__private::encode_to_vec(&(serde_bytes::Bytes::new(&data),)).unwrap();
    assert!(matches!(
        <Primes as Worker>::decode_args(4, &bytes).unwrap(),
        PrimesArgs::Checksum { data } if data == [1, 2, 3]
    ));
    let bytes = forkworker::__private::encode_to_vec(&()).unwrap();
    assert!(matches!(
        <Primes as Worker>::decode_args(5, &bytes).unwrap(),
        PrimesArgs::Ping {}
    ));

    let bytes = forkworker::__private::encode_to_vec(&vec![2u64, 3]).unwrap();
    assert!(matches!(
        <Primes as Worker>::decode_return(0, &bytes).unwrap(),
        PrimesReturn::Sieve(v) if v == [2, 3]
    ));
    let bytes = forkworker::__private::encode_to_vec(serde_bytes::Bytes::new(&[9, 8])).unwrap();
    assert!(matches!(
        <Primes as Worker>::decode_return(4, &bytes).unwrap(),
        PrimesReturn::Checksum(v) if v == [9, 8]
    ));
    assert!(matches!(
        <Primes as Worker>::decode_return(5, &[]).unwrap(),
        PrimesReturn::Ping(())
    ));

    // Unknown methods and trailing bytes are errors, not panics.
    assert_eq!(
        <Primes as Worker>::decode_args(6, &[]).err(),
        Some(forkworker::WireError::UnknownMethod(6))
    );
    assert!(<Primes as Worker>::decode_return(5, &[0]).is_err());

    // Lifecycle hooks are forwarded.
    let mut value = Primes::new();
    <Primes as Worker>::setup(&mut value);
    <Primes as Worker>::teardown(&mut value);
    assert!(<Primes as Worker>::check_environment(&value).is_empty());
}

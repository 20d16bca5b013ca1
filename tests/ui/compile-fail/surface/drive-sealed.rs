// `Drive` is sealed: only the runtime's mediators implement it.
use std::time::Instant;

struct MyPool;

impl forkworker::Drive for MyPool {
    fn alias(&self) -> &str {
        "mine"
    }
    fn poll(&mut self) -> usize {
        0
    }
    fn stats(&self) -> forkworker::Stats {
        unimplemented!()
    }
    fn pending(&self) -> usize {
        0
    }
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
    fn shutdown(&mut self) {}
    fn suspend(&mut self) -> usize {
        0
    }
    fn set_recover(&mut self, _: bool) {}
    fn start_pool(&mut self) -> Result<(), forkworker::StartError> {
        Ok(())
    }
}

fn main() {}

//! The seed's Task API: ad-hoc background processes. Each task runs a closure once in a
//! forked process that exits when done; a typed return value comes back like a worker's.
//! A task that panics or crashes is reported with its cause, and never takes the program down.
//!
//! ```sh
//! cargo run --release --example tasks
//! ```

use std::time::Duration;

use forkworker::prelude::*;

fn main() -> Result<(), TaskError> {
    let mut tasks = Tasks::new("Tasks");
    tasks.timeout(Duration::from_secs(5));

    // A typed return value.
    let sum = tasks.spawn(|| (1..=1_000_000u64).sum::<u64>())?;
    // A task that panics: reported, the program goes on.
    let panics = tasks.spawn(|| -> u32 { panic!("bad input") })?;
    // A task that hangs: killed at its timeout.
    tasks.timeout(Duration::from_millis(200));
    let hangs = tasks.spawn(|| std::thread::sleep(Duration::from_secs(60)))?;

    println!("sum = {}", tasks.wait(sum, Duration::from_secs(5))?);
    println!(
        "panicking task: {}",
        tasks.wait(panics, Duration::from_secs(5)).unwrap_err()
    );
    println!(
        "hanging task: {}",
        tasks.wait(hangs, Duration::from_secs(5)).unwrap_err()
    );
    Ok(())
}

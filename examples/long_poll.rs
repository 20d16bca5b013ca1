//! The seed's LongPoll pattern: one worker kept busy at all times. Whenever the pool is idle,
//! the loop calls it again, so the latest state is always being uploaded (here: a checksum of
//! a growing buffer stands in for the upload).
//!
//! ```sh
//! cargo run --release --example long_poll
//! ```

use std::time::Duration;

use forkworker::prelude::*;

/// Uploads the latest results somewhere slow.
pub struct Uploader;

#[forkworker::worker]
impl Uploader {
    /// "Uploads" `data`; returns how many bytes went out.
    pub fn upload(&self, data: Vec<u8>) -> usize {
        std::thread::sleep(Duration::from_millis(150));
        data.len()
    }
}

struct App {
    api: Option<WorkerKey<UploaderMediator>>,
    results: Vec<u8>,
    uploads: u32,
}

impl Application for App {
    fn execute(&mut self, workers: &mut Workers<Self>, ctl: &mut Control) {
        // The daemon's own work: results keep growing.
        self.results
            .extend_from_slice(&ctl.iteration().to_le_bytes());
        let api = workers.get(self.api.expect("added in main"));
        // As soon as the worker is idle, call it again: it is always uploading the latest.
        if api.is_idle() {
            api.upload(self.results.clone()).ok();
            self.uploads += 1;
        }
        if ctl.iteration() >= 60 {
            println!(
                "{} uploads started in {} iterations",
                self.uploads,
                ctl.iteration() + 1
            );
            ctl.stop();
        }
    }
}

fn main() {
    let mut daemon = Daemon::new(
        "LongPoll",
        App {
            api: None,
            results: Vec::new(),
            uploads: 0,
        },
    );
    daemon.loop_interval(Duration::from_millis(20));
    let mut api = UploaderMediator::new("Api", Uploader);
    api.workers(1).timeout(Duration::from_secs(120));
    let api = daemon.add(api);
    daemon.app().api = Some(api);
    daemon.on_return(api, |_app, _workers, call, _log| {
        if let Some(Ok(UploaderReturn::Upload(bytes))) = call.return_value() {
            println!("upload {} done: {bytes} bytes", call.id());
        }
    });
    if let Err(e) = daemon.run() {
        eprintln!("LongPoll: {e}");
        std::process::exit(1);
    }
}

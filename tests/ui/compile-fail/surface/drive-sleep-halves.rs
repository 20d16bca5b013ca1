// The halves of a sleep belong to `sleep_on`: a user cannot begin one without ending it.
fn half_a_sleep(pool: &mut dyn forkworker::Drive) {
    let mut fds = Vec::new();
    pool.begin_sleep(&mut fds);
    pool.end_sleep();
}

fn main() {}

// The wire format is the runtime's own; generated code reaches it through `__private`.
fn main() {
    let _ = forkworker::wire::encode_to_vec(&1u8);
}

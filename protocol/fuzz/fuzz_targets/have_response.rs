//! Untrusted bytes as a `/swarm-dl/have/6` response, validated against a fixed request.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarm_protocol::hash::lfs_sha256;
use swarm_protocol::wire::{Bitmap, HaveRequest, HaveResponse, MAX_HAVE_RESPONSE, decode_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = decode_frame::<HaveResponse>(data, MAX_HAVE_RESPONSE) {
        let req = HaveRequest { etag: lfs_sha256(b"fuzz"), size: 100 << 20, known: Bitmap::new(25), downloading: true, news: false };
        let _ = resp.validate(&req);
        let _ = resp.have.count_ones();
    }
});

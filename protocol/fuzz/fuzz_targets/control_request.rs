//! Untrusted bytes as a control-socket request: any local user can write them to a node's socket.
#![no_main]
use libfuzzer_sys::fuzz_target;
use swarm_protocol::control::{ControlRequest, decode_request, encode_request};

fuzz_target!(|data: &[u8]| {
    // Whatever decodes must be valid, and must survive a round trip unchanged.
    if let Ok(req) = decode_request(data) {
        if let ControlRequest::Get(g) = &req {
            assert!(g.validate().is_ok());
        }
        assert_eq!(decode_request(&encode_request(&req)).ok(), Some(req));
    }
});

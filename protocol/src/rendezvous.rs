//! Who fetches what from the Hub: rendezvous (highest-random-weight) hashing.
//!
//! When several nodes download one file, each chunk that no peer holds has one owner among
//! them: the node with the highest [`score`] for that chunk. Only the owner fetches it from the
//! Hub; the others take it from the owner. The same rule, with [`metadata_key`] instead of a
//! file's salt and chunk 0, picks the one member of a private swarm that asks the Hub for a
//! revision's listing. No node asks another: each computes the same numbers from the peer ids
//! it knows, so this rule must give the same answer on every node and every version. The
//! golden values in the tests pin it; a change is a new protocol version.

/// A 64-bit hash of a node, from its peer id's bytes (libp2p's multihash encoding), computed
/// once per node.
pub fn node_hash(peer_id: &[u8]) -> u64 {
    fnv1a(peer_id)
}

/// The salt of a file (from its ETag), so that different files spread differently.
pub fn salt_of(etag: &str) -> u64 {
    fnv1a(etag.as_bytes())
}

/// The key of a repo's revision, for choosing its metadata owner.
pub fn metadata_key(repo_type: &str, repo_id: &str, revision: &str) -> u64 {
    fnv1a(format!("{repo_type}/{repo_id}@{revision}").as_bytes())
}

/// The score of the node with [`node_hash`] `node` for chunk `index` of the file with `salt`:
/// the highest score owns the chunk.
pub fn score(node: u64, salt: u64, index: u32) -> u64 {
    splitmix(node ^ salt ^ u64::from(index).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix(h)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The peer id of the ed25519 key whose secret is 32 bytes of 1, as libp2p encodes it
    /// (identity multihash of the protobuf public key).
    const PEER: [u8; 38] = [
        0x00, 0x24, 0x08, 0x01, 0x12, 0x20, 0x8a, 0x88, 0xe3, 0xdd, 0x74, 0x09, 0xf1, 0x95, 0xfd, 0x52, 0xdb, 0x2d,
        0x3c, 0xba, 0x5d, 0x72, 0xca, 0x67, 0x09, 0xbf, 0x1d, 0x94, 0x12, 0x1b, 0xf3, 0x74, 0x88, 0x01, 0xb4, 0x0f,
        0x6f, 0x5c,
    ];

    /// Golden values: every node of a swarm must compute exactly these. If this test fails, the
    /// change would split a mixed-version swarm (two owners, or none, for each chunk).
    #[test]
    fn golden_values() {
        assert_eq!(node_hash(&PEER), GOLDEN[0]);
        assert_eq!(salt_of("a".repeat(64).as_str()), GOLDEN[1]);
        assert_eq!(score(node_hash(&PEER), salt_of(&"a".repeat(64)), 0), GOLDEN[2]);
        assert_eq!(score(node_hash(&PEER), salt_of(&"a".repeat(64)), 7), GOLDEN[3]);
        assert_eq!(metadata_key("model", "org/model", "main"), GOLDEN[4]);
    }

    const GOLDEN: [u64; 5] =
        [5505924998375905296, 11058324100418021696, 13801620259910444046, 3346977682348108338, 7522208174395077761];

    #[test]
    fn ownership_spreads_evenly() {
        let nodes: Vec<u64> = (0u8..8).map(|i| node_hash(&[i; 38])).collect();
        let salt = salt_of("b");
        let mut owned = [0u32; 8];
        for index in 0..8000 {
            let (best, _) = nodes.iter().enumerate().max_by_key(|(_, n)| score(**n, salt, index)).expect("nodes");
            owned[best] += 1;
        }
        assert!(owned.iter().all(|&n| (800..1200).contains(&n)), "{owned:?}");
    }
}

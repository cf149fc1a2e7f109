//! The run-scoped token a job uploads its outputs with: HMAC-SHA256 of the execution under
//! the server's key. Derived, not stored, so that any server replica (and a restarted one)
//! checks it without shared state, and it is good for that one attempt only.

use crate::ExecutionId;
use sha2::{Digest, Sha256};

const BLOCK: usize = 64;

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// The token of `execution` (hex).
pub fn run_token(key: &[u8], execution: &ExecutionId) -> String {
    let message = format!(
        "runplane-outputs\0{}\0{}",
        execution.run_id, execution.attempt
    );
    hmac(key, message.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `token` is `execution`'s, compared in constant time.
pub fn verify(key: &[u8], execution: &ExecutionId, token: &str) -> bool {
    let expected = run_token(key, execution);
    expected.len() == token.len()
        && expected
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn tokens_are_per_attempt() {
        let one = ExecutionId {
            run_id: "r".into(),
            attempt: 1,
        };
        let two = ExecutionId {
            run_id: "r".into(),
            attempt: 2,
        };
        let token = run_token(b"key", &one);
        assert!(verify(b"key", &one, &token));
        assert!(!verify(b"key", &two, &token));
        assert!(!verify(b"other", &one, &token));
        assert!(!verify(b"key", &one, "short"));
    }
}

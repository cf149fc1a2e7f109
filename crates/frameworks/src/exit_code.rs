//! Exit statuses as container runtimes report them.

/// Container runtimes (Docker's convention, which the engine's init process and the kubelet
/// keep) report a process killed by a signal as 128 + the signal: `(exit code, signal)`.
pub fn split_code(code: i32) -> (Option<i32>, Option<i32>) {
    match code {
        129..=192 => (None, Some(code - 128)),
        _ => (Some(code), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_above_128() {
        assert_eq!(split_code(0), (Some(0), None));
        assert_eq!(split_code(3), (Some(3), None));
        assert_eq!(split_code(137), (None, Some(9)));
        assert_eq!(split_code(128), (Some(128), None));
        assert_eq!(split_code(255), (Some(255), None));
    }
}

//! The sizes of `oneachnode` (Triton's `sdc-oneachnode`), defined once for every part it
//! passes through: the CLI refuses a file past [`FILE_CAP`] before sending it, the
//! headnode reads a request only up to [`REQUEST_CAP`] and an agent's answer only up to
//! [`ANSWER_CAP`], and the agent puts and gets files of at most [`FILE_CAP`] bytes and
//! keeps at most [`OUTPUT_CAP`] of each output stream.

/// Largest file put or got, in bytes.
pub const FILE_CAP: u64 = 8 << 20;
/// Most of each command output stream (stdout, stderr) kept, in bytes.
pub const OUTPUT_CAP: usize = 1 << 20;
/// Longest a command may run, in seconds.
pub const MAX_TIMEOUT_SECS: u64 = 3600;
/// Room for everything in a request or an answer but the file or the output (paths,
/// field names, the server's identity).
const OVERHEAD: u64 = 64 << 10;

/// The length of `n` bytes in (padded) base64.
pub const fn base64_len(n: u64) -> u64 {
    n.div_ceil(3) * 4
}

/// Largest request body (the operator's to the headnode, the headnode's to an agent): a
/// put of a [`FILE_CAP`] file, in base64, in JSON.
pub const REQUEST_CAP: u64 = base64_len(FILE_CAP) + OVERHEAD;

/// Largest agent answer the headnode reads: a got file in base64, or two output streams
/// with every byte escaped in JSON (`\u00XX`, six bytes for one), whichever is larger.
pub const ANSWER_CAP: u64 = {
    let file = base64_len(FILE_CAP);
    let output = 2 * 6 * OUTPUT_CAP as u64;
    (if file > output { file } else { output }) + OVERHEAD
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_what_they_carry() {
        assert_eq!(base64_len(0), 0);
        assert_eq!(base64_len(1), 4);
        assert_eq!(base64_len(3), 4);
        assert_eq!(base64_len(4), 8);
        assert!(REQUEST_CAP > base64_len(FILE_CAP));
        assert!(ANSWER_CAP > base64_len(FILE_CAP) && ANSWER_CAP > 12 * OUTPUT_CAP as u64);
    }
}

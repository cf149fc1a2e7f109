//! Turning a process's output into log records: whole lines (each with its newline, long ones
//! cut at [`MAX_LINE`]), with secret values redacted. Shared by every framework's capture, so
//! that a log reads the same whichever framework ran the job.

use runplane_domain::REDACTED;

/// The longest record: a line longer than this is cut into several records, so a job writing
/// gigabytes without a newline cannot make the supervisor buffer it all.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// Takes the complete records off the front of `pending`: each line *with* its `\n` (so the
/// records concatenate back to the exact output), cutting lines at [`MAX_LINE`]; at the end of
/// the stream the partial last line too.
pub(crate) fn split_records(pending: &mut Vec<u8>, at_eof: bool) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let mut start = 0;
    loop {
        let rest = &pending[start..];
        let take = match rest.iter().position(|b| *b == b'\n') {
            Some(newline) if newline < MAX_LINE => newline + 1,
            _ if rest.len() >= MAX_LINE => MAX_LINE,
            _ => break,
        };
        records.push(rest[..take].to_vec());
        start += take;
    }
    if at_eof && start < pending.len() {
        records.push(pending[start..].to_vec());
        start = pending.len();
    }
    pending.drain(..start);
    records
}

/// Replaces secret values in the job's output with [`REDACTED`] before it reaches the log.
///
/// It works on records, which are whole lines (see [`split_records`]): a value is found
/// wherever it sits in a line, however many writes the job used to print it. It escapes only
/// when a line longer than [`MAX_LINE`] is cut inside the value, or when the job transforms
/// it (encodes, reverses, prints it a character per line).
#[derive(Default)]
pub(crate) struct Redactor {
    /// Longest first, so that a value containing another is replaced whole.
    values: Vec<Vec<u8>>,
}

/// Shorter values are not redacted: replacing every `a` or `42` would wreck the log and
/// protect nothing.
pub(crate) const MIN_REDACTED_LEN: usize = 4;

impl Redactor {
    pub(crate) fn new(values: &[String]) -> Redactor {
        let mut values: Vec<Vec<u8>> = values
            .iter()
            .filter(|value| value.len() >= MIN_REDACTED_LEN)
            .map(|value| value.as_bytes().to_vec())
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Redactor { values }
    }

    /// `record` with every value replaced; borrowed when nothing matched (the common case).
    pub(crate) fn apply<'a>(&self, record: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        let mut out = std::borrow::Cow::Borrowed(record);
        for value in &self.values {
            if let Some(replaced) = replace_all(&out, value, REDACTED.as_bytes()) {
                out = std::borrow::Cow::Owned(replaced);
            }
        }
        out
    }
}

/// `haystack` with every `needle` replaced, or None when there is none.
fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Option<Vec<u8>> {
    let first = find(haystack, needle)?;
    let mut out = Vec::with_capacity(haystack.len());
    out.extend_from_slice(&haystack[..first]);
    out.extend_from_slice(with);
    let mut rest = &haystack[first + needle.len()..];
    while let Some(at) = find(rest, needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    Some(out)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_their_newline_and_partial_lines_wait() {
        let mut pending = b"a\nbc\n\npartial".to_vec();
        assert_eq!(
            split_records(&mut pending, false),
            vec![b"a\n".to_vec(), b"bc\n".to_vec(), b"\n".to_vec()]
        );
        assert_eq!(pending, b"partial");
        pending.extend_from_slice(b" line\nnext");
        assert_eq!(
            split_records(&mut pending, false),
            vec![b"partial line\n".to_vec()]
        );
        assert_eq!(split_records(&mut pending, true), vec![b"next".to_vec()]);
        assert!(pending.is_empty());
        assert!(split_records(&mut pending, true).is_empty());
    }

    #[test]
    fn redaction_replaces_every_value_longest_first() {
        let redactor = Redactor::new(&[
            "s3cr3t".to_string(),
            "s3cr3t-and-more".to_string(),
            "abc".to_string(), // too short: left alone
        ]);
        assert_eq!(
            &*redactor.apply(b"token=s3cr3t-and-more, again s3cr3t s3cr3ts3cr3t abc\n"),
            b"token=[REDACTED], again [REDACTED] [REDACTED][REDACTED] abc\n"
        );
        assert!(matches!(
            redactor.apply(b"nothing here\n"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(&*Redactor::new(&[]).apply(b"s3cr3t"), b"s3cr3t");
    }

    /// A value printed in pieces (several writes of one unterminated line) is still one
    /// record once the line ends, and is redacted in it.
    #[test]
    fn redaction_sees_a_line_written_in_pieces() {
        let redactor = Redactor::new(&["hunter2-value".to_string()]);
        let mut pending = b"key=hunt".to_vec();
        assert!(split_records(&mut pending, false).is_empty());
        pending.extend_from_slice(b"er2-val");
        assert!(split_records(&mut pending, false).is_empty());
        pending.extend_from_slice(b"ue!\n");
        let records = split_records(&mut pending, false);
        assert_eq!(records.len(), 1);
        assert_eq!(&*redactor.apply(&records[0]), b"key=[REDACTED]!\n");
    }

    #[test]
    fn long_lines_are_cut_at_the_limit() {
        let mut pending = vec![b'x'; MAX_LINE * 2 + 10];
        pending.push(b'\n');
        pending.extend_from_slice(b"tail");
        let records = split_records(&mut pending, false);
        assert_eq!(
            records.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![MAX_LINE, MAX_LINE, 11]
        );
        assert_eq!(pending, b"tail");

        let mut pending = vec![b'y'; MAX_LINE - 1];
        pending.push(b'\n');
        assert_eq!(
            split_records(&mut pending, false).len(),
            1,
            "a line of exactly MAX_LINE bytes is one record"
        );
    }
}

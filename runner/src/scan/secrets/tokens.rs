//! Splitting a line into tokens by a byte class.

/// Maximal runs of bytes for which `part` holds, as byte ranges (ASCII bytes only, so
/// every range is on `char` boundaries).
pub(super) fn tokens(
    bytes: &[u8],
    part: impl Fn(u8) -> bool,
) -> impl Iterator<Item = (usize, usize)> {
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() && !part(bytes[i]) {
            i += 1;
        }
        if i >= bytes.len() {
            return None;
        }
        let start = i;
        while i < bytes.len() && part(bytes[i]) {
            i += 1;
        }
        Some((start, i))
    })
}

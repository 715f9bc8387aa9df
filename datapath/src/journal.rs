//! A secondary's write-ahead journal for one replica set of a session: before a batch
//! is applied, where its operations will leave something is appended; saving the
//! index empties it. A worker that took over from one interrupted between applying a
//! batch and saving the index (killed, cut off) gets, with the saved index, what is
//! now at those places, and treats it as unknown: an entry created there but missing
//! from the index would otherwise stay on the secondary after the primary removed it.
//!
//! The file is a sequence of frames, each a 4-byte little-endian length and the
//! postcard encoding of a `Vec<Touched>`; a torn last frame (the node died mid-append)
//! is ignored: its batch was not applied.

use crate::index::Op;
use crate::path::RelPath;

/// A place an operation changes: its path, and whether what is below it changes too
/// (see [`Op::touches`]).
pub type Touched = (RelPath, bool);

/// The places the operations of a batch touch.
pub fn touched<'a>(ops: impl IntoIterator<Item = &'a Op>) -> Vec<Touched> {
    ops.into_iter()
        .flat_map(Op::touches)
        .map(|(path, below)| (path.clone(), below))
        .collect()
}

/// One frame of the journal: `touched`, length-prefixed.
pub fn frame(touched: &[Touched]) -> Result<Vec<u8>, postcard::Error> {
    let body = postcard::to_stdvec(touched)?;
    let len = u32::try_from(body.len()).map_err(|_| postcard::Error::SerializeBufferFull)?;
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Every place named by the complete frames of `bytes`, once each (a place also
/// named with `below` keeps it); reading stops at the first torn or unreadable frame.
pub fn read(bytes: &[u8]) -> Vec<Touched> {
    let mut places: std::collections::BTreeMap<RelPath, bool> = Default::default();
    let mut rest = bytes;
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        let Some(body) = tail.get(..len) else {
            break;
        };
        let Ok(frame) = postcard::from_bytes::<Vec<Touched>>(body) else {
            break;
        };
        for (path, below) in frame {
            *places.entry(path).or_default() |= below;
        }
        rest = &tail[len..];
    }
    places.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::Hash;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn frames_read_back_merged_and_a_torn_tail_is_ignored() {
        let first = touched(&[
            Op::Mkdir { path: p("d") },
            Op::Write {
                path: p("d/f"),
                size: 0,
                content: Hash([0; 32]),
                chunks: Vec::new(),
                meta: None,
            },
            Op::Remove {
                path: p("gone"),
                dir: false,
            },
        ]);
        let firsts = vec![(p("d"), false), (p("d/f"), false), (p("gone"), false)];
        assert_eq!(first, firsts);
        let second = touched(&[Op::Rename {
            from: p("x"),
            to: p("d"),
        }]);
        let mut bytes = frame(&first).unwrap();
        bytes.extend(frame(&second).unwrap());
        let whole = read(&bytes);
        assert_eq!(
            whole,
            vec![
                (p("d"), true),
                (p("d/f"), false),
                (p("gone"), false),
                (p("x"), true)
            ]
        );
        // The last frame cut short: only the first counts.
        let torn = &bytes[..bytes.len() - 2];
        assert_eq!(read(torn), firsts);
        assert!(read(&[1, 0]).is_empty());
    }
}

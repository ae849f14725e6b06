//! Reading model sources (IR text, specs, configs) with a size bound: a file, or
//! something that only looks like one (`/dev/zero`, a FIFO), is read at most
//! [`MAX_SOURCE_BYTES`] + 1 bytes, so an enormous input is an error, not an abort on
//! allocation.

use std::io::Read;
use std::path::Path;

/// The largest source read: 4x a two-million-node IR text (65 MB), which already
/// takes ~1 GiB to hold as a graph.
pub const MAX_SOURCE_BYTES: u64 = 256 << 20;

/// The UTF-8 text of `path`, or an error that starts with the path.
pub fn read_source(path: &Path) -> Result<String, String> {
    read_bounded(path, MAX_SOURCE_BYTES)
}

/// The bytes of `path` if there are at most `max` of them (`Ok(None)` if more: the read
/// stops at `max` + 1), or an error that starts with the path.
pub fn read_at_most(path: &Path, max: u64) -> Result<Option<Vec<u8>>, String> {
    let cannot = |e: std::io::Error| format!("{}: cannot read: {e}", path.display());
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

fn read_bounded(path: &Path, max: u64) -> Result<String, String> {
    let shown = path.display();
    let bytes = read_at_most(path, max)?.ok_or_else(|| {
        format!(
            "{shown}: larger than the {} MiB a model source may be",
            max >> 20
        )
    })?;
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "{shown}: cannot read: stream did not contain valid UTF-8 (byte {})",
            e.utf8_error().valid_up_to()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endless_and_oversized_sources_are_errors() {
        let e = read_bounded(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(
            e.contains("/dev/zero") && e.contains("larger than the 1 MiB"),
            "{e}"
        );
        let p = std::env::temp_dir().join(format!("attnc-source-{}.air", std::process::id()));
        std::fs::write(&p, "x".repeat(1025)).unwrap();
        assert!(read_bounded(&p, 1024).unwrap_err().contains("larger than"));
        assert_eq!(read_bounded(&p, 1025).unwrap().len(), 1025);
        std::fs::write(&p, [b'a', 0xff]).unwrap();
        let e = read_bounded(&p, 1024).unwrap_err();
        assert!(e.contains("UTF-8") && e.contains("byte 1"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }
}

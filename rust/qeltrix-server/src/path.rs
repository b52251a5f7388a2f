//! URL path to container path, without ever leaving the root (docs/DESIGN.md "Servers").
//!
//! `GET /a/b.mp4` maps to `ROOT/a/b.mp4.qltx`. Every percent-decoded segment must be a
//! plain name: no empty, `.` or `..` segments, no `/`, `\` or NUL inside a segment, no
//! leading dots (hidden files, and the `.qeltrix-tmp` files of unfinished writes). The
//! resolved file must still be under the canonical root after following symlinks.
use percent_encoding::percent_decode_str;
use std::path::{Path, PathBuf};

/// Suffix of stored containers.
pub const CONTAINER_SUFFIX: &str = ".qltx";

/// Why a URL path does not name a servable container.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    /// The path is malformed or tries to escape the root (answered 404, revealing nothing).
    Rejected,
    /// No such container.
    NotFound,
}

/// Map a request path (the part before `?`) to a container file under `root`
/// (already canonical). Touches the file system only to resolve symlinks.
pub fn resolve(root: &Path, url_path: &str) -> Result<PathBuf, PathError> {
    let rel = url_path.strip_prefix('/').ok_or(PathError::Rejected)?;
    if rel.is_empty() {
        return Err(PathError::NotFound);
    }
    let mut out = root.to_path_buf();
    let segments: Vec<&str> = rel.split('/').collect();
    for (n, raw) in segments.iter().enumerate() {
        let seg = decode_segment(raw)?;
        if n + 1 == segments.len() {
            out.push(format!("{seg}{CONTAINER_SUFFIX}"));
        } else {
            out.push(&*seg);
        }
    }
    let real = out.canonicalize().map_err(|_| PathError::NotFound)?;
    if !real.starts_with(root) || !real.is_file() {
        return Err(PathError::NotFound);
    }
    Ok(real)
}

/// One percent-decoded path segment, if it is a plain name: not empty, no leading dot, no
/// `/`, `\\` or NUL (the rules of this module's doc, shared with directory listings).
pub fn decode_segment(raw: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    let seg = percent_decode_str(raw).decode_utf8().map_err(|_| PathError::Rejected)?;
    if !name_is_plain(&seg) {
        return Err(PathError::Rejected);
    }
    Ok(seg)
}

/// Whether a decoded name may be served or listed: not empty, not hidden (which also covers
/// the `.qeltrix-tmp` files of unfinished writes), no separator or NUL inside.
pub fn name_is_plain(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_and_refuses() {
        let tmp = std::env::temp_dir().join(format!("qeltrix-path-test-{}", std::process::id()));
        let root = tmp.join("root");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/b.mp4.qltx"), b"x").unwrap();
        std::fs::write(tmp.join("secret.qltx"), b"s").unwrap();
        std::os::unix::fs::symlink(tmp.join("secret.qltx"), root.join("link.qltx")).unwrap();
        let root = root.canonicalize().unwrap();
        assert_eq!(resolve(&root, "/a/b.mp4"), Ok(root.join("a/b.mp4.qltx")));
        assert_eq!(resolve(&root, "/a/b%2Emp4"), Ok(root.join("a/b.mp4.qltx")));
        for bad in [
            "/../secret",
            "/a/../../secret",
            "/%2e%2e/secret",
            "/a/%2F..%2Fsecret",
            "//etc/passwd",
            "/.hidden",
        ] {
            assert_eq!(resolve(&root, bad), Err(PathError::Rejected), "{bad}");
        }
        assert_eq!(resolve(&root, "/link"), Err(PathError::NotFound));
        assert_eq!(resolve(&root, "/a/missing"), Err(PathError::NotFound));
        assert_eq!(resolve(&root, "/a"), Err(PathError::NotFound));
        assert_eq!(resolve(&root, "relative"), Err(PathError::Rejected));
        assert_eq!(resolve(&root, "/a/%ff"), Err(PathError::Rejected));
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}

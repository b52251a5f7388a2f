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

/// Like [`resolve`], and when no container has that name, a member of an archive
/// (docs/FORMAT.md section 16): `GET /backup.qltx/docs/a.pdf` maps to the file
/// `ROOT/backup.qltx` (named in full, suffix included) and the member path `docs/a.pdf`.
/// The archive's segments follow the rules of [`resolve`]; the member's are decoded the same
/// way (the archive's reader checks that such a member exists).
pub fn resolve_target(root: &Path, url_path: &str) -> Result<(PathBuf, Option<String>), PathError> {
    match resolve(root, url_path) {
        Err(PathError::NotFound) => {}
        other => return other.map(|p| (p, None)),
    }
    let rel = url_path.strip_prefix('/').ok_or(PathError::Rejected)?;
    let segments: Vec<&str> = rel.split('/').collect();
    let mut out = root.to_path_buf();
    for (n, raw) in segments.iter().enumerate().take(segments.len().saturating_sub(1)) {
        let seg = decode_segment(raw)?;
        out.push(&*seg);
        if !seg.ends_with(CONTAINER_SUFFIX) {
            continue;
        }
        let Ok(real) = out.canonicalize() else {
            continue;
        };
        if real.starts_with(root) && real.is_file() {
            let member = segments[n + 1..]
                .iter()
                .map(|raw| decode_segment(raw).map(|s| s.into_owned()))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok((real, Some(member.join("/"))));
        }
    }
    Err(PathError::NotFound)
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

    #[test]
    fn archive_members() {
        let tmp = std::env::temp_dir().join(format!("qeltrix-path-member-test-{}", std::process::id()));
        let root = tmp.join("root");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/backup.qltx"), b"x").unwrap();
        std::fs::write(root.join("a/plain.mp4.qltx"), b"x").unwrap();
        let root = root.canonicalize().unwrap();
        let archive = root.join("a/backup.qltx");
        assert_eq!(
            resolve_target(&root, "/a/backup.qltx/docs/r%20s.pdf"),
            Ok((archive.clone(), Some("docs/r s.pdf".into())))
        );
        assert_eq!(
            resolve_target(&root, "/a/plain.mp4"),
            Ok((root.join("a/plain.mp4.qltx"), None))
        );
        assert_eq!(resolve_target(&root, "/a/backup.qltx/../x"), Err(PathError::Rejected));
        assert_eq!(
            resolve_target(&root, "/a/backup.qltx/.hidden"),
            Err(PathError::Rejected)
        );
        assert_eq!(resolve_target(&root, "/a/backup.qltx"), Err(PathError::NotFound));
        assert_eq!(resolve_target(&root, "/a/missing.qltx/x"), Err(PathError::NotFound));
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}

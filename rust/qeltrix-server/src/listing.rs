//! Opt-in directory listings (`--list`): `GET /` or `GET /sub/` lists the containers and
//! subdirectories under ROOT, as HTML or JSON (`?format=json`, or `Accept: application/json`
//! without `text/html`).
//!
//! A listing shows exactly what the server would serve, by the same rules as `path.rs`: the
//! directory URL's segments must be plain names, the directory must be under the canonical
//! root after following symlinks, and an entry is shown only if its name is plain (no hidden
//! files, so no `.qeltrix-tmp` files of unfinished writes), it still resolves under the root,
//! and it is a directory or a regular `*.qltx` file. Containers are listed under the name a
//! client requests, i.e. with `.qltx` stripped; their size is the stored file's length
//! (`container_len`: opening each container for its plaintext length would cost a KDF run
//! under a passphrase). At most [`MAX_ENTRIES`] entries are read from one directory.
use crate::path::{decode_segment, name_is_plain, PathError, CONTAINER_SUFFIX};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Entries read from one directory at most; the listing says when it stopped there.
pub const MAX_ENTRIES: usize = 10_000;

/// Bytes left unencoded in a link: RFC 3986 unreserved.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// One listed name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The URL segment a client requests (decoded): a container's name without `.qltx`.
    pub name: String,
    pub is_dir: bool,
    /// Length of the stored container file (0 for directories).
    pub container_len: u64,
}

/// A directory's listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The decoded directory URL path, starting and ending with `/`.
    pub path: String,
    /// Sorted by name, directories and containers together.
    pub entries: Vec<Entry>,
    /// More than [`MAX_ENTRIES`] names were in the directory; the rest are not shown.
    pub truncated: bool,
}

/// Whether a request path names a directory (it ends with `/`).
pub fn is_directory_url(url_path: &str) -> bool {
    url_path.ends_with('/')
}

/// The `Location` for a request of `/dir` (no trailing `/`) that names a directory the
/// listing would show, keeping the query; `None` if it names none. Blocking.
pub fn redirect_to_directory(root: &Path, url_path: &str, query: Option<&str>) -> Option<String> {
    if url_path.ends_with('/') {
        return None;
    }
    let with_slash = format!("{url_path}/");
    resolve_dir(root, &with_slash).ok()?;
    Some(match query {
        Some(q) => format!("{with_slash}?{q}"),
        None => with_slash,
    })
}

/// The directory a URL path ending in `/` names under `root` (canonical), and its decoded
/// path.
fn resolve_dir(root: &Path, url_path: &str) -> Result<(PathBuf, String), PathError> {
    let rel = url_path.strip_prefix('/').ok_or(PathError::Rejected)?;
    let mut dir = root.to_path_buf();
    let mut path = String::from("/");
    if !rel.is_empty() {
        // `/a/b/`: every segment before the final `/` must be a plain name (`//` is not).
        let inner = rel.strip_suffix('/').ok_or(PathError::Rejected)?;
        for raw in inner.split('/') {
            let seg = decode_segment(raw)?;
            dir.push(&*seg);
            path.push_str(&seg);
            path.push('/');
        }
    }
    let dir = dir.canonicalize().map_err(|_| PathError::NotFound)?;
    if !dir.starts_with(root) || !dir.is_dir() {
        return Err(PathError::NotFound);
    }
    Ok((dir, path))
}

/// List the directory a URL path ending in `/` names under `root` (canonical). Blocking.
pub fn list(root: &Path, url_path: &str) -> Result<Listing, PathError> {
    let (dir, path) = resolve_dir(root, url_path)?;
    let mut entries = Vec::new();
    let mut truncated = false;
    for item in std::fs::read_dir(&dir).map_err(|_| PathError::NotFound)? {
        if entries.len() == MAX_ENTRIES {
            truncated = true;
            break;
        }
        let Ok(item) = item else { continue };
        let Ok(name) = item.file_name().into_string() else {
            continue;
        };
        if !name_is_plain(&name) {
            continue;
        }
        // Follow symlinks as the resolver does, and show only what stays under the root.
        let Ok(real) = dir.join(&name).canonicalize() else {
            continue;
        };
        if !real.starts_with(root) {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&real) else { continue };
        if meta.is_dir() {
            entries.push(Entry {
                name,
                is_dir: true,
                container_len: 0,
            });
        } else if let Some(stem) = name.strip_suffix(CONTAINER_SUFFIX).filter(|s| !s.is_empty()) {
            if meta.is_file() {
                entries.push(Entry {
                    name: stem.to_owned(),
                    is_dir: false,
                    container_len: meta.len(),
                });
            }
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name).then(a.is_dir.cmp(&b.is_dir)));
    Ok(Listing {
        path,
        entries,
        truncated,
    })
}

/// Whether the client asked for JSON: `format=json` in the query, or an `Accept` naming
/// `application/json` but not `text/html` (a browser's navigation asks for HTML).
pub fn wants_json(query: Option<&str>, accept: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|p| p == "format=json"))
        || accept.is_some_and(|a| a.contains("application/json") && !a.contains("text/html"))
}

/// A relative link to an entry, percent-encoded (directories end in `/`).
fn href(e: &Entry) -> String {
    let mut h = utf8_percent_encode(&e.name, SEGMENT).to_string();
    if e.is_dir {
        h.push('/');
    }
    h
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The listing as an HTML page: names escaped, links percent-encoded and relative.
pub fn html(listing: &Listing) -> String {
    let title = html_escape(&listing.path);
    let mut out = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n\
         <body><h1>Index of {title}</h1>\n<ul>\n"
    );
    if listing.path != "/" {
        out.push_str("<li><a href=\"../\">../</a></li>\n");
    }
    for e in &listing.entries {
        let shown = if e.is_dir {
            format!("{}/", e.name)
        } else {
            e.name.clone()
        };
        let _ = write!(
            out,
            "<li><a href=\"{}\">{}</a>",
            html_escape(&href(e)),
            html_escape(&shown)
        );
        if !e.is_dir {
            let _ = write!(out, " ({} bytes stored)", e.container_len);
        }
        out.push_str("</li>\n");
    }
    out.push_str("</ul>\n");
    if listing.truncated {
        let _ = writeln!(out, "<p>Only the first {MAX_ENTRIES} entries are shown.</p>");
    }
    out.push_str("</body></html>\n");
    out
}

/// The listing as JSON: `{"path", "entries": [{"name", "type", "href", "container_len"}],
/// "truncated"}`, `type` being `"container"` or `"directory"`.
pub fn json(listing: &Listing) -> String {
    let mut out = format!("{{\"path\":{},\"entries\":[", json_string(&listing.path));
    for (n, e) in listing.entries.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let kind = if e.is_dir { "directory" } else { "container" };
        let _ = write!(
            out,
            "{{\"name\":{},\"type\":\"{kind}\",\"href\":{}",
            json_string(&e.name),
            json_string(&href(e))
        );
        if !e.is_dir {
            let _ = write!(out, ",\"container_len\":{}", e.container_len);
        }
        out.push('}');
    }
    let _ = writeln!(out, "],\"truncated\":{}}}", listing.truncated);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_only_what_is_served() {
        let tmp = std::env::temp_dir().join(format!("qeltrix-listing-test-{}", std::process::id()));
        let root = tmp.join("root");
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::create_dir_all(root.join(".hidden-dir")).unwrap();
        std::fs::write(root.join("a <b>&.mp4.qltx"), b"xyz").unwrap();
        std::fs::write(root.join("plain.txt"), b"not a container").unwrap();
        std::fs::write(root.join(".x.qltx"), b"hidden").unwrap();
        std::fs::write(root.join(".a.mp4.qltx.Abc.qeltrix-tmp"), b"unfinished").unwrap();
        std::fs::write(root.join("sub/in.bin.qltx"), b"1").unwrap();
        std::fs::write(tmp.join("outside.qltx"), b"secret").unwrap();
        std::fs::create_dir_all(tmp.join("outside-dir")).unwrap();
        std::os::unix::fs::symlink(tmp.join("outside.qltx"), root.join("escape.qltx")).unwrap();
        std::os::unix::fs::symlink(tmp.join("outside-dir"), root.join("escape-dir")).unwrap();
        std::os::unix::fs::symlink(root.join("sub"), root.join("inside-link")).unwrap();
        let root = root.canonicalize().unwrap();

        let l = list(&root, "/").unwrap();
        let names: Vec<(&str, bool)> = l.entries.iter().map(|e| (e.name.as_str(), e.is_dir)).collect();
        assert_eq!(names, [("a <b>&.mp4", false), ("inside-link", true), ("sub", true)]);
        assert_eq!(l.entries[0].container_len, 3);
        let page = html(&l);
        assert!(
            page.contains("<a href=\"a%20%3Cb%3E%26.mp4\">a &lt;b&gt;&amp;.mp4</a>"),
            "{page}"
        );
        assert!(!page.contains("../"));
        let j = json(&l);
        assert!(
            j.starts_with("{\"path\":\"/\",\"entries\":[{\"name\":\"a <b>&.mp4\",\"type\":\"container\""),
            "{j}"
        );
        assert!(j.ends_with("\"truncated\":false}\n"));

        let l = list(&root, "/sub/").unwrap();
        assert_eq!(l.path, "/sub/");
        assert_eq!(l.entries.len(), 2);
        assert!(html(&l).contains("<a href=\"../\">"));
        assert_eq!(list(&root, "/s%75b/").unwrap().path, "/sub/");
        for bad in [
            "/../",
            "/%2e%2e/",
            "/.hidden-dir/",
            "/sub//",
            "//",
            "/sub",
            "sub/",
            "/a%2Fb/",
        ] {
            assert_eq!(list(&root, bad), Err(PathError::Rejected), "{bad}");
        }
        for missing in ["/escape-dir/", "/nope/", "/a%20%3Cb%3E%26.mp4.qltx/"] {
            assert_eq!(list(&root, missing), Err(PathError::NotFound), "{missing}");
        }
        assert_eq!(
            redirect_to_directory(&root, "/sub", Some("a=1")).as_deref(),
            Some("/sub/?a=1")
        );
        assert_eq!(
            redirect_to_directory(&root, "/inside-link", None).as_deref(),
            Some("/inside-link/")
        );
        for no in ["/sub/", "/escape-dir", "/.hidden-dir", "/nope", "/a%20%3Cb%3E%26.mp4"] {
            assert_eq!(redirect_to_directory(&root, no, None), None, "{no}");
        }
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn json_escapes() {
        assert_eq!(json_string("a\"b\\c\n\u{1}é"), "\"a\\\"b\\\\c\\u000a\\u0001é\"");
        assert!(wants_json(Some("x=1&format=json"), None));
        assert!(wants_json(None, Some("application/json")));
        assert!(!wants_json(None, Some("text/html,application/json;q=0.1")));
        assert!(!wants_json(Some("format=jsonp"), Some("*/*")));
    }
}

//! Browsers and CDNs over real sockets, without cryptography: signed URLs beside the bearer
//! token (with a stand-in signature check: the scheme itself is Python's), CORS, the
//! Cache-Control setting and directory listings.
use bytes::Bytes;
use qeltrix_server::cors::Cors;
use qeltrix_server::http::{start, Config};
use qeltrix_server::{Container, OpenError, Opener, ReadError, UrlSignature};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Plain(Vec<u8>);

impl Container for Plain {
    fn pt_len(&self) -> u64 {
        self.0.len() as u64
    }
    fn etag_id(&self) -> String {
        format!("plain-{}", self.0.len())
    }
    fn read(&self, pos: u64, len: u64, emit: &mut dyn FnMut(Bytes) -> bool) -> Result<(), ReadError> {
        emit(Bytes::copy_from_slice(&self.0[pos as usize..(pos + len) as usize]));
        Ok(())
    }
}

/// Signatures: `qx-sig=good` holds for `/data.bin` only, `qx-sig=old` has expired. Counts the
/// checks, to show that unsigned requests never reach it.
#[derive(Clone, Default)]
struct Opened(Arc<AtomicUsize>);

impl Opener for Opened {
    type C = Plain;
    fn open(&self, path: &Path) -> Result<Arc<Plain>, OpenError> {
        Ok(Arc::new(Plain(std::fs::read(path).map_err(|_| OpenError::NotFound)?)))
    }
    fn check_url_signature(&self, url_path: &str, query: &str) -> UrlSignature {
        self.0.fetch_add(1, Ordering::Relaxed);
        match (url_path, query.split('&').find_map(|p| p.strip_prefix("qx-sig="))) {
            (_, Some("old")) => UrlSignature::Expired,
            ("/data.bin" | "/", Some("good")) => UrlSignature::Valid,
            _ => UrlSignature::Invalid,
        }
    }
}

fn setup(tag: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("qeltrix-web-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("data.bin.qltx"), b"0123456789").unwrap();
    std::fs::write(root.join("sub/<x>.txt.qltx"), b"x").unwrap();
    root
}

fn send(addr: SocketAddr, method: &str, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("header end") + 4;
    let head = String::from_utf8(buf[..split].to_vec()).unwrap().to_ascii_lowercase();
    (head[9..12].parse().unwrap(), head, buf[split..].to_vec())
}

#[test]
fn signed_urls_beside_the_token() {
    let root = setup("signed");
    let opener = Opened::default();
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), root.clone());
    config.token = Some("tok".into());
    config.signed_urls = true;
    let mut server = start(config, opener.clone()).unwrap();
    let addr = server.local_addr();
    let get = |path: &str, extra: &str| send(addr, "GET", path, extra);
    let bearer = "Authorization: Bearer tok\r\n";

    assert_eq!(get("/data.bin", bearer).0, 200);
    assert_eq!(get("/data.bin?x=1", "").0, 401);
    assert_eq!(get("/data.bin?qx-sigx=good", "").0, 401);
    assert_eq!(opener.0.load(Ordering::Relaxed), 0, "unsigned requests are not checked");
    let (st, _, body) = get("/data.bin?qx-expires=1&qx-sig=good", "Range: bytes=2-3\r\n");
    assert_eq!((st, &body[..]), (206, &b"23"[..]));
    let (st, _, body) = get("/data.bin?qx-sig=old", "");
    assert_eq!((st, &body[..]), (403, &b"this signed URL has expired\n"[..]));
    assert_eq!(get("/sub/%3Cx%3E.txt?qx-sig=good", "").0, 403);
    // One URL, many range requests (a <video>): checked once while it is valid.
    let checks = opener.0.load(Ordering::Relaxed);
    let later = "/data.bin?qx-expires=99999999999&qx-sig=good";
    for _ in 0..3 {
        assert_eq!(get(later, "Range: bytes=0-0\r\n").0, 206);
    }
    assert_eq!(opener.0.load(Ordering::Relaxed), checks + 1);
    // The token wins over a bad signature beside it.
    assert_eq!(get("/data.bin?qx-sig=bad", bearer).0, 200);
    server.stop();

    // Without a token, a signature is required.
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), root.clone());
    config.signed_urls = true;
    let mut server = start(config, opener.clone()).unwrap();
    let addr = server.local_addr();
    assert_eq!(send(addr, "GET", "/data.bin", "").0, 403);
    assert_eq!(send(addr, "GET", "/data.bin", "Authorization: Bearer tok\r\n").0, 403);
    assert_eq!(send(addr, "HEAD", "/data.bin?qx-sig=good", "").0, 200);
    server.stop();
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn cors_cache_control_and_listing() {
    let root = setup("cors");
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), root.clone());
    config.token = Some("tok".into());
    config.cors = Cors::new(["https://app.example".to_owned()]);
    config.cache_control = "public, max-age=60".parse().unwrap();
    config.list = true;
    let mut server = start(config, Opened::default()).unwrap();
    let addr = server.local_addr();
    let origin = "Origin: https://app.example\r\n";
    let bearer = "Authorization: Bearer tok\r\n";

    let (st, head, body) = send(
        addr,
        "OPTIONS",
        "/data.bin",
        &format!("{origin}Access-Control-Request-Method: GET\r\n"),
    );
    assert_eq!((st, body.len()), (204, 0), "{head}");
    assert!(
        head.contains("access-control-allow-origin: https://app.example\r\n"),
        "{head}"
    );
    assert!(head.contains("access-control-allow-methods: get, head\r\n"), "{head}");
    let (st, head, _) = send(
        addr,
        "GET",
        "/data.bin",
        &format!("{origin}{bearer}Range: bytes=0-0\r\n"),
    );
    assert_eq!(st, 206);
    assert!(head.contains("access-control-expose-headers: content-range"), "{head}");
    assert!(head.contains("cache-control: public, max-age=60\r\n"), "{head}");
    let (st, head, _) = send(addr, "GET", "/data.bin", origin);
    assert_eq!(st, 401);
    assert!(
        head.contains("access-control-allow-origin: https://app.example\r\n"),
        "{head}"
    );
    let (st, head, _) = send(
        addr,
        "GET",
        "/data.bin",
        &format!("Origin: https://evil.example\r\n{bearer}"),
    );
    assert_eq!(st, 200);
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    assert!(head.contains("vary: origin\r\n"), "{head}");

    assert_eq!(send(addr, "GET", "/", "").0, 401);
    let (st, head, body) = send(addr, "GET", "/sub/", bearer);
    assert_eq!(st, 200);
    assert!(head.contains("cache-control: no-cache\r\n"), "{head}");
    let page = String::from_utf8(body).unwrap();
    assert!(page.contains("<a href=\"%3Cx%3E.txt\">&lt;x&gt;.txt</a>"), "{page}");
    let (st, _, body) = send(addr, "GET", "/?format=json", bearer);
    assert_eq!(st, 200);
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("{\"name\":\"data.bin\",\"type\":\"container\""));
    let (st, head, _) = send(addr, "GET", "/sub", bearer);
    assert_eq!(st, 301);
    assert!(head.contains("location: /sub/\r\n"), "{head}");
    server.stop();
    std::fs::remove_dir_all(&root).unwrap();
}

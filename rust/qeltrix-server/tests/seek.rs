//! The SeekServer over real sockets on 127.0.0.1, with a plaintext container type: what the
//! HTTP layer does is checked here without any cryptography.
use bytes::Bytes;
use qeltrix_server::http::{start, Config};
use qeltrix_server::{Container, OpenError, Opener, ReadError};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

struct Plain(Vec<u8>, bool);

impl Container for Plain {
    fn pt_len(&self) -> u64 {
        self.0.len() as u64
    }
    fn etag_id(&self) -> String {
        format!("plain-{}", self.0.len())
    }
    fn read(&self, pos: u64, len: u64, emit: &mut dyn FnMut(Bytes) -> bool) -> Result<(), ReadError> {
        if self.1 {
            return Err(ReadError("block 0 failed authentication".into()));
        }
        // Tiny chunks for the small files (many frames), block-sized ones for the big one.
        let chunk_len = if self.0.len() > 1 << 20 { 64 * 1024 } else { 7 };
        for chunk in self.0[pos as usize..(pos + len) as usize].chunks(chunk_len) {
            if !emit(Bytes::copy_from_slice(chunk)) {
                break;
            }
        }
        Ok(())
    }
}

struct PlainOpener;

impl Opener for PlainOpener {
    type C = Plain;
    fn open(&self, path: &Path) -> Result<Arc<Plain>, OpenError> {
        let data = std::fs::read(path).map_err(|_| OpenError::NotFound)?;
        let name = path.file_name().unwrap().to_string_lossy();
        if name.starts_with("locked") {
            return Err(OpenError::WrongKey("no recipient opens it".into()));
        }
        Ok(Arc::new(Plain(data, name.starts_with("bad"))))
    }
}

fn setup(tag: &str) -> (PathBuf, Vec<u8>) {
    let root = std::env::temp_dir().join(format!("qeltrix-seek-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("dir")).unwrap();
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.join("dir/file.mp4.qltx"), &data).unwrap();
    std::fs::write(root.join("empty.txt.qltx"), b"").unwrap();
    std::fs::write(root.join("bad.bin.qltx"), b"zzz").unwrap();
    std::fs::write(root.join("locked.bin.qltx"), b"zzz").unwrap();
    (root, data)
}

/// Send one raw request, read the whole response (the request says Connection: close).
fn raw(addr: std::net::SocketAddr, req: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("header end") + 4;
    let head = String::from_utf8(buf[..split].to_vec()).unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head, buf[split..].to_vec())
}

fn get(addr: std::net::SocketAddr, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n"),
    )
}

#[test]
fn ranges_and_statuses() {
    let (root, data) = setup("ranges");
    let mut server = start(Config::new("127.0.0.1:0".parse().unwrap(), root.clone()), PlainOpener).unwrap();
    let addr = server.local_addr();

    let (st, head, body) = get(addr, "/dir/file.mp4", "");
    assert_eq!(st, 200);
    assert_eq!(body, data);
    assert!(head.contains("accept-ranges: bytes"), "{head}");
    assert!(head.contains("content-type: video/mp4"), "{head}");

    let (st, head, body) = get(addr, "/dir/file.mp4", "Range: bytes=10-19\r\n");
    assert_eq!((st, &body[..]), (206, &data[10..20]));
    assert!(head.contains("content-range: bytes 10-19/1000"), "{head}");

    let (st, _, body) = get(addr, "/dir/file.mp4", "Range: bytes=-5\r\n");
    assert_eq!((st, &body[..]), (206, &data[995..]));

    let (st, head, _) = get(addr, "/dir/file.mp4", "Range: bytes=1000-\r\n");
    assert_eq!(st, 416);
    assert!(head.contains("content-range: bytes */1000"), "{head}");

    let (st, _, body) = get(addr, "/dir/file.mp4", "Range: bytes=9-5\r\n");
    assert_eq!((st, body.len()), (200, 1000));

    let (st, head, body) = get(addr, "/dir/file.mp4", "Range: bytes=0-1,998-\r\n");
    assert_eq!(st, 206);
    let boundary = head
        .split("boundary=")
        .nth(1)
        .unwrap()
        .split("\r\n")
        .next()
        .unwrap()
        .to_owned();
    let text = String::from_utf8_lossy(&body);
    assert_eq!(text.matches(&format!("--{boundary}")).count(), 3);
    assert!(text.contains("Content-Range: bytes 0-1/1000"));
    assert!(text.ends_with(&format!("--{boundary}--\r\n")));
    let cl: usize = head
        .split("content-length: ")
        .nth(1)
        .unwrap()
        .split("\r\n")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(cl, body.len());

    let etag = head
        .split("etag: ")
        .nth(1)
        .unwrap()
        .split("\r\n")
        .next()
        .unwrap()
        .to_owned();
    let (st, _, body) = get(
        addr,
        "/dir/file.mp4",
        &format!("Range: bytes=0-0\r\nIf-Range: {etag}\r\n"),
    );
    assert_eq!((st, body.len()), (206, 1));
    let (st, _, body) = get(addr, "/dir/file.mp4", "Range: bytes=0-0\r\nIf-Range: \"stale\"\r\n");
    assert_eq!((st, body.len()), (200, 1000));
    let (st, _, _) = get(addr, "/dir/file.mp4", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(st, 304);

    let (st, head, body) = raw(
        addr,
        "HEAD /dir/file.mp4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(st, 200);
    assert!(head.contains("content-length: 1000"));
    assert!(body.is_empty());

    assert_eq!(get(addr, "/empty.txt", "").0, 200);
    assert_eq!(get(addr, "/empty.txt", "Range: bytes=0-\r\n").0, 416);
    assert_eq!(get(addr, "/missing", "").0, 404);
    assert_eq!(get(addr, "/../etc/passwd", "").0, 404);
    assert_eq!(get(addr, "/bad.bin", "").0, 500);
    assert_eq!(get(addr, "/locked.bin", "").0, 403);
    assert_eq!(
        raw(
            addr,
            "POST /dir/file.mp4 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .0,
        405
    );
    assert_eq!(raw(addr, "GARBAGE\r\n\r\n").0, 400);

    // Keep-alive: two requests on one connection.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = "GET /dir/file.mp4 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-3\r\n\r\n";
    s.write_all(format!("{req}{req}").as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.windows(8).filter(|w| w == b"HTTP/1.1").count() < 2 || !got.ends_with(&data[..4]) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    server.stop();
    assert!(!server.is_running());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn token_and_slow_clients() {
    let (root, _) = setup("token");
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), root.clone());
    config.token = Some("s3cret".into());
    config.header_timeout = Duration::from_millis(800);
    let mut server = start(config, PlainOpener).unwrap();
    let addr = server.local_addr();
    assert_eq!(get(addr, "/dir/file.mp4", "").0, 401);
    assert_eq!(get(addr, "/dir/file.mp4", "Authorization: Bearer nope\r\n").0, 401);
    assert_eq!(get(addr, "/dir/file.mp4", "Authorization: Bearer s3cret\r\n").0, 200);

    // A client that sends its request slowly is cut off; others are served meanwhile.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /dir/fi").unwrap();
    assert_eq!(get(addr, "/dir/file.mp4", "Authorization: Bearer s3cret\r\n").0, 200);
    std::thread::sleep(Duration::from_millis(1500));
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = slow.write_all(b"le.mp4 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n");
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        !String::from_utf8_lossy(&buf).contains("200 OK"),
        "slow client was served"
    );
    server.stop();
    std::fs::remove_dir_all(&root).unwrap();
}

/// A 32 MiB file: far more than the socket buffers, so a client that does not read stalls.
fn big_file(root: &Path) -> Vec<u8> {
    let data: Vec<u8> = (0..32u32 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(root.join("big.bin.qltx"), &data).unwrap();
    data
}

/// Connect and ask for the whole big file without reading the answer.
fn stalled(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s
}

#[test]
fn stalled_readers_hold_no_thread() {
    let (root, data) = setup("stall");
    let big = big_file(&root);
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), root.clone());
    // Two blocking threads: one stalled response holding one would starve everyone else.
    config.max_blocking_threads = 2;
    let mut server = start(config, PlainOpener).unwrap();
    let addr = server.local_addr();
    let stuck: Vec<TcpStream> = (0..24).map(|_| stalled(addr)).collect();
    std::thread::sleep(Duration::from_millis(500));

    // Liveness, not speed: others are served in full while the stalled ones stay connected.
    let (status, _, body) = get(addr, "/dir/file.mp4", "");
    assert_eq!((status, body), (200, data));
    assert_eq!(get(addr, "/nope", "").0, 404);
    let (status, _, body) = get(addr, "/big.bin", "Range: bytes=1000-5000000\r\n");
    assert_eq!(status, 206);
    assert!(body == big[1000..=5_000_000]);

    // A trickle reader does not block others either.
    let mut trickle = stalled(addr);
    let mut byte = [0u8; 1];
    for _ in 0..5 {
        trickle.read_exact(&mut byte).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, _, body) = get(addr, "/big.bin", "");
    assert_eq!(status, 200);
    assert!(body == big, "full body differs");
    drop(stuck);
    server.stop();
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn stalled_reader_is_dropped_after_idle_timeout() {
    let (root, _) = setup("stalldrop");
    let big = big_file(&root);
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), root.clone());
    config.idle_timeout = Duration::from_millis(700);
    let mut server = start(config, PlainOpener).unwrap();
    let mut s = stalled(server.local_addr());
    std::thread::sleep(Duration::from_secs(3));
    // The server gave up on the response: reading now ends early instead of at 32 MiB.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(buf.len() < big.len(), "a stalled response was kept for good");
    server.stop();
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn per_client_connection_limit() {
    let (root, data) = setup("perclient");
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), root.clone());
    config.max_connections_per_client = 2;
    let mut server = start(config, PlainOpener).unwrap();
    let addr = server.local_addr();
    let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    // The third is closed without an answer.
    let mut third = TcpStream::connect(addr).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = third.write_all(b"GET /dir/file.mp4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut buf = Vec::new();
    let _ = third.read_to_end(&mut buf);
    assert!(buf.is_empty(), "the connection over the limit was served");
    // Once one closes, the client is served again.
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(b"GET /dir/file.mp4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        if buf.ends_with(&data) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never served after the limit freed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server.stop();
    std::fs::remove_dir_all(&root).unwrap();
}

//! A real S3-compatible server for backup tests: moto's server (from PyPI, installed by
//! `.ci/test` into `~/.cache/mend/moto`), started on a free loopback port with one bucket, and
//! killed when dropped (also when a test panics).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::cluster::{DEADLINE, free_port, wait_until};

/// Where `.ci/test` installs moto's server; `MEND_MOTO_SERVER` names another.
fn moto_server() -> PathBuf {
    if let Some(path) = std::env::var_os("MEND_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let installed = home.join(".cache/mend/moto/bin/moto_server");
    assert!(
        installed.exists(),
        "moto's S3 server is not installed at {}: run `bash .ci/test` once (it installs it \
         from PyPI), or set MEND_MOTO_SERVER",
        installed.display()
    );
    installed
}

/// A running moto server with the bucket [`S3::BUCKET`].
pub struct S3 {
    child: Child,
    /// Its URL (`http://127.0.0.1:<port>`).
    pub endpoint: String,
    port: u16,
}

impl S3 {
    /// The bucket every server is started with.
    pub const BUCKET: &'static str = "mend-backups";

    /// Starts a server and creates [`S3::BUCKET`].
    pub fn start() -> S3 {
        let port = free_port();
        let child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let s3 = S3 {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
        };
        assert!(
            wait_until(DEADLINE, || s3
                .request("PUT", &format!("/{}", S3::BUCKET))
                .is_some_and(|status| status == 200)),
            "moto_server on port {port} did not create the bucket"
        );
        s3
    }

    /// One unsigned HTTP/1.1 request (moto does not check signatures); the status code.
    fn request(&self, method: &str, path: &str) -> Option<u16> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.port
        );
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        answer.split_whitespace().nth(1)?.parse().ok()
    }

    /// The keys under `prefix` in the bucket, sorted (a ListObjectsV2 read of the XML).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect moto");
        let request = format!(
            "GET /{}?list-type=2&prefix={prefix} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             Connection: close\r\n\r\n",
            S3::BUCKET,
            self.port
        );
        stream.write_all(request.as_bytes()).expect("list");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("list");
        let mut keys: Vec<String> = answer
            .split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split("</Key>").next())
            .map(str::to_string)
            .collect();
        keys.sort();
        keys
    }

    /// The YAML of `spec.backup.store` (and `fromBackup.store`) for this server, indented
    /// by `indent` spaces.
    pub fn store_yaml(&self, prefix: &str, indent: usize) -> String {
        let pad = " ".repeat(indent);
        format!(
            "{pad}s3:\n{pad}  bucket: {}\n{pad}  prefix: {prefix}\n{pad}  endpoint: {}\n",
            S3::BUCKET,
            self.endpoint
        )
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

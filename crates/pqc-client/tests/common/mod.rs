//! Shared helpers for end-to-end tests with real processes: a real
//! `pqc-server` on a loopback port with a temporary data folder, and
//! `pqc-client` invocations with their own profiles.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The directory holding the workspace's binaries for this test build.
pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pqc-client")).parent().unwrap().to_path_buf()
}

/// Path of the `pqc-server` binary, building it if this test run did not.
pub fn server_bin() -> PathBuf {
    let path = bin_dir().join("pqc-server");
    if !path.exists() {
        let profile = if bin_dir().ends_with("release") { vec!["--release"] } else { vec![] };
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "pqc-server"])
            .args(profile)
            .status()
            .expect("cargo build -p pqc-server");
        assert!(status.success(), "building pqc-server failed");
    }
    path
}

/// A free loopback UDP port (best effort).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A free loopback TCP port (best effort).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `pqc-server` process.
pub struct TestServer {
    pub child: Option<Child>,
    pub data: PathBuf,
    pub port: u16,
    pub status_port: u16,
    pub fingerprint: String,
}

impl TestServer {
    /// Starts a server on a fresh port with its data in `data`.
    pub fn start(data: &Path) -> Self {
        Self::start_on(data, free_udp_port(), free_tcp_port())
    }

    /// Starts a server on the given ports (used to restart on the same address).
    pub fn start_on(data: &Path, port: u16, status_port: u16) -> Self {
        Self::start_with(data, port, status_port, None)
    }

    /// Starts a server with `config` (TOML) as its configuration file.
    pub fn start_configured(data: &Path, config: &str) -> Self {
        let file = data.with_extension("toml");
        std::fs::write(&file, config).unwrap();
        Self::start_with(data, free_udp_port(), free_tcp_port(), Some(&file))
    }

    fn start_with(data: &Path, port: u16, status_port: u16, config: Option<&Path>) -> Self {
        let mut server = Command::new(server_bin());
        if let Some(c) = config {
            server.arg("--config").arg(c);
        }
        let mut child = server
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--status")
            .arg(format!("127.0.0.1:{status_port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pqc-server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut listening = false;
        let mut fingerprint = String::new();
        while Instant::now() < deadline && (!listening || fingerprint.is_empty()) {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                if line.contains("listening on") {
                    listening = true;
                }
                if let Some(fp) = line.split("fingerprint: ").nth(1) {
                    fingerprint = fp.trim().to_string();
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("pqc-server exited early: {status}");
            }
        }
        assert!(listening, "pqc-server did not report listening in time");
        Self { child: Some(child), data: data.to_path_buf(), port, status_port, fingerprint }
    }

    /// `127.0.0.1:PORT`.
    /// `GET /status` of the running server: its JSON body.
    pub fn status(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.status_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
    }

    /// The server's count of open QUIC connections (`connections_current`).
    pub fn connections_open(&self) -> u64 {
        let status = self.status();
        let at = status.find("\"connections_current\":").expect("connections_current in /status") + 22;
        status[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the server with SIGTERM (graceful) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server with SIGKILL (a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server with SIGKILL (a crash) and starts it again on the
    /// same data folder and ports.
    pub fn crash_and_restart(&mut self) {
        self.kill();
        let again = Self::start_on(&self.data, self.port, self.status_port);
        *self = again;
    }

    /// Restarts on the same data folder and ports.
    pub fn restart(&mut self) {
        self.stop();
        let again = Self::start_on(&self.data, self.port, self.status_port);
        *self = again;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `pqc-client` user with its own profile folder.
pub struct User {
    pub name: String,
    pub profile: PathBuf,
    pub server: String,
}

impl User {
    pub fn new(root: &Path, name: &str, server: &str) -> Self {
        Self { name: name.into(), profile: root.join(format!("profile-{name}")), server: server.into() }
    }

    /// Runs `pqc-client` with this user's profile.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, None)
    }

    /// `pqc-client` with this user's profile, server and passphrase, its
    /// output captured.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pqc-client"));
        cmd.arg("--profile")
            .arg(&self.profile)
            .arg("--server")
            .arg(&self.server)
            .args(args)
            .env("PQC_PASSPHRASE", format!("passphrase of {}", self.name))
            .env_remove("PQC_PROFILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut cmd = self.command(args);
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("run pqc-client");
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "pqc-client {args:?} as {} failed: {}\n{}",
            self.name,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "pqc-client {args:?} as {} unexpectedly succeeded", self.name);
        String::from_utf8(out.stderr).unwrap()
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() { stack.push(p) } else { out.push(p) }
        }
    }
    out
}

/// Whether any file under `dir` contains `needle`.
pub fn tree_contains(dir: &Path, needle: &[u8]) -> Option<PathBuf> {
    files_under(dir)
        .into_iter()
        .find(|p| std::fs::read(p).map(|b| b.windows(needle.len()).any(|w| w == needle)).unwrap_or(false))
}

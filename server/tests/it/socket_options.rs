//! Socket options of the real `slipway server` process, read from its own descriptors:
//! a connection it accepts has Nagle's algorithm off (`TCP_NODELAY`). With Nagle on, a
//! response written in more than one piece (head, then body chunks; SSE events) waits
//! for the client's delayed ACK, ~40 ms on Linux: the stall issue 18 measured between
//! a runner's request and the source archive arriving.
//!
//! A copy of each of the server's socket descriptors is taken with `pidfd_getfd(2)`
//! (Linux 5.6; ptrace rights over the server, which the test has as its parent and as
//! root in CI). The workspace forbids `unsafe`, so the syscalls are Python's (ctypes).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use crate::support::process::Processes;

/// Prints `<peer address> <TCP_NODELAY>` for every TCP socket of process `argv[1]`.
const SOCKETS_OF: &str = r#"
import ctypes, os, socket, sys
pid = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
SYS_pidfd_getfd = 438  # x86_64 and aarch64 alike (the generic syscall table)
pidfd = os.pidfd_open(pid)
for name in os.listdir(f"/proc/{pid}/fd"):
    try:
        if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
            continue
    except OSError:
        continue
    fd = libc.syscall(SYS_pidfd_getfd, pidfd, int(name), 0)
    if fd < 0:
        sys.exit(f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
    s = socket.socket(fileno=fd)
    try:
        if s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM:
            host, port = s.getpeername()[:2]
            print(f"{host}:{port}", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    except OSError:
        pass  # a listening socket has no peer
    finally:
        s.close()
"#;

/// TCP_NODELAY of the server's end of the connection whose peer is `peer`.
fn server_nodelay(pid: u32, peer: std::net::SocketAddr) -> Option<bool> {
    let out = Command::new("python3")
        .args(["-c", SOCKETS_OF, &pid.to_string()])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "reading the server's sockets: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let (addr, value) = line.split_once(' ')?;
            (addr == peer.to_string()).then(|| value.trim() != "0")
        })
}

#[test]
fn accepted_connections_have_nagle_off() {
    let mut p = Processes::new();
    p.start_server("server");
    let pid = p.pid("server");
    let mut client = TcpStream::connect(p.addr()).unwrap();
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // One request and its answer: the connection is accepted and being served.
    client
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: slipway\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 12];
    client.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    let nodelay = server_nodelay(pid, client.local_addr().unwrap())
        .expect("the server holds the accepted connection");
    assert!(
        nodelay,
        "the server's accepted socket has Nagle's algorithm on (TCP_NODELAY unset)"
    );
}

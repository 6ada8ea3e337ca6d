//! The few socket calls std and tokio do not offer: TCP_INFO (how long since a socket last
//! received and sent data, to time out a connection handed to a process without reading
//! it), keep-alive timings, and a send that never blocks.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// Milliseconds since the socket last received data, and since it last sent data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    pub since_recv: Duration,
    pub since_sent: Duration,
    /// Bytes received so far.
    pub bytes_received: u64,
    /// Bytes sent and acknowledged by the peer so far.
    pub bytes_acked: u64,
}

/// Whether a connection has a request waiting for its answer, followed tick by tick from
/// [`Activity`] samples: new bytes in make a request pending, new bytes out answer it.
/// Both in one tick: the later of the two (by the millisecond timestamps) wins, a tie
/// counts as answered (an answer follows its request).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    received: u64,
    acked: u64,
    pub pending: bool,
}

impl Pending {
    pub fn update(&mut self, a: &Activity) -> bool {
        let got = a.bytes_received > self.received;
        let sent = a.bytes_acked > self.acked;
        if got && (!sent || a.since_recv < a.since_sent) {
            self.pending = true;
        } else if sent {
            self.pending = false;
        }
        self.received = a.bytes_received;
        self.acked = a.bytes_acked;
        self.pending
    }
}

/// Reads TCP_INFO; `None` if the socket is not TCP or the call fails.
pub fn activity(fd: BorrowedFd<'_>) -> Option<Activity> {
    // SAFETY: tcp_info is plain data; zeroed is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the pointers are to a live tcp_info and its length; the kernel writes at
    // most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    Some(Activity {
        since_recv: Duration::from_millis(info.tcpi_last_data_recv.into()),
        since_sent: Duration::from_millis(info.tcpi_last_data_sent.into()),
        bytes_received: info.tcpi_bytes_received,
        bytes_acked: info.tcpi_bytes_acked,
    })
}

/// Turns on TCP keep-alive: probes after `idle` without traffic, every `interval`, and
/// the connection fails after `count` unanswered ones (so a relay to a machine that
/// vanished ends instead of hanging).
pub fn keepalive(fd: BorrowedFd<'_>, idle: Duration, interval: Duration, count: u32) {
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
        // SAFETY: an int option with its size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(
        libc::IPPROTO_TCP,
        libc::TCP_KEEPIDLE,
        idle.as_secs().max(1) as libc::c_int,
    );
    set(
        libc::IPPROTO_TCP,
        libc::TCP_KEEPINTVL,
        interval.as_secs().max(1) as libc::c_int,
    );
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, count as libc::c_int);
}

/// Sends what fits now without blocking (for a last error line to a client that may not
/// be reading).
pub fn send_now(fd: BorrowedFd<'_>, bytes: &[u8]) {
    // SAFETY: a valid buffer and its length.
    unsafe {
        libc::send(
            fd.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
}

/// Whether a connection that should be silent (a pre-connected relay socket, before its
/// header) is still open and silent: nothing to read, no end of input, no error.
pub fn open_and_silent(fd: BorrowedFd<'_>) -> bool {
    let mut byte = 0u8;
    // SAFETY: a valid one-byte buffer.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn activity_follows_traffic() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, _) = l.accept().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let a = activity(server.as_fd()).unwrap();
        assert!(a.since_recv >= Duration::from_millis(200), "{a:?}");
        client.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        server.read_exact(&mut b).unwrap();
        let mut pending = Pending::default();
        let a = activity(server.as_fd()).unwrap();
        assert_eq!(a.bytes_received, 1);
        assert!(pending.update(&a), "a request came in: {a:?}");
        assert!(pending.update(&a), "still unanswered");
        send_now(server.as_fd(), b"y");
        client.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"y");
        std::thread::sleep(Duration::from_millis(50)); // the ack
        let a = activity(server.as_fd()).unwrap();
        assert_eq!(a.bytes_acked, 1);
        assert!(!pending.update(&a), "answered: {a:?}");
        keepalive(
            server.as_fd(),
            Duration::from_secs(5),
            Duration::from_secs(2),
            3,
        );
        let not_a_socket = std::fs::File::open("/dev/null").unwrap();
        assert!(activity(not_a_socket.as_fd()).is_none());
    }
}

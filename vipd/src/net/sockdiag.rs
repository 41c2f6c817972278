//! The TCP connections on a node's VIPs, through NETLINK_SOCK_DIAG: a dump
//! of the sockets whose local address is one of a set of VIPs (both
//! families; an IPv6 socket carrying a v4-mapped address counts as IPv4),
//! and SOCK_DESTROY of such a socket. The requests are built by hand: two
//! fixed C structs (`inet_diag_req_v2`, `inet_diag_msg`) are all it takes,
//! and no netlink crate here speaks sock_diag's destroy request.

use std::{
    collections::BTreeSet,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use tracing::instrument;

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDR_LEN: usize = 16;
/// `struct inet_diag_sockid`: ports, two 16-byte addresses, ifindex, cookie.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, sockid.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg`: family, state, timer, retrans, sockid, then
/// expires, rqueue, wqueue, uid, inode.
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;

/// How long a dump or an abort waits for the kernel's answer.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// TCP states (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u8 = 1;
const TCP_LISTEN: u8 = 10;
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE: u8 = 7;

/// The states of a connection worth a client's tickle: only established
/// ones (a half-open or closing one has nothing to resume).
pub const ESTABLISHED: u32 = 1 << TCP_ESTABLISHED;
/// Every state of a socket that belongs to a connection and can be
/// aborted: all but listeners (the service's, which must stay), TIME_WAIT
/// (nothing left to send) and CLOSE.
pub const CONNECTED: u32 =
    0xfff & !(1 << TCP_LISTEN) & !(1 << TCP_TIME_WAIT) & !(1 << TCP_CLOSE) & !1;

#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    #[error("cannot open a NETLINK_SOCK_DIAG socket: {0}")]
    Open(#[source] io::Error),
    #[error("sock_diag dump of {family} TCP sockets failed: {source}")]
    Dump {
        family: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("sock_diag answered a malformed message ({0})")]
    Malformed(&'static str),
    #[error("cannot abort the TCP socket {local} <-> {remote}: {source}")]
    Destroy {
        local: SocketAddr,
        remote: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// One TCP socket whose local address is a VIP.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TcpConn {
    /// The VIP and the service's port (a v4-mapped address as IPv4).
    pub local: SocketAddr,
    /// The client (as IPv4 when `local` is).
    pub remote: SocketAddr,
    pub state: u8,
    /// The socket as the kernel named it (family and `inet_diag_sockid`,
    /// cookie included): what SOCK_DESTROY needs to find it again.
    raw: RawId,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct RawId {
    family: u8,
    sockid: [u8; SOCKID_LEN],
}

/// A NETLINK_SOCK_DIAG socket (blocking, with a receive timeout so a
/// kernel that never answers cannot hang the caller).
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
}

impl SockDiag {
    pub fn open() -> Result<SockDiag, SockDiagError> {
        // SAFETY: plain socket(2); the fd is checked and owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(SockDiagError::Open(io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh socket nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: the option value is a timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(SockDiagError::Open(io::Error::last_os_error()));
        }
        Ok(SockDiag { fd, seq: 0 })
    }

    /// The TCP sockets in one of `states` (a bit per TCP state) whose local
    /// address is in `vips`, both families.
    #[instrument(level = "debug", skip(self, vips), fields(vips = vips.len()))]
    pub fn connections(
        &mut self,
        vips: &BTreeSet<IpAddr>,
        states: u32,
    ) -> Result<Vec<TcpConn>, SockDiagError> {
        let mut out = Vec::new();
        if vips.is_empty() {
            return Ok(out);
        }
        // A dual-stack service's IPv4 connections are IPv6 sockets with
        // v4-mapped addresses: the IPv6 dump is needed for IPv4 VIPs too.
        for (family, name) in [(libc::AF_INET, "IPv4"), (libc::AF_INET6, "IPv6")] {
            let req = request(
                SOCK_DIAG_BY_FAMILY,
                NLM_F_REQUEST | NLM_F_DUMP,
                self.next_seq(),
                family as u8,
                states,
                &[0; SOCKID_LEN],
            );
            self.send(&req).map_err(|source| SockDiagError::Dump {
                family: name,
                source,
            })?;
            self.read_dump(vips, &mut out).map_err(|e| match e {
                DumpError::Io(source) => SockDiagError::Dump {
                    family: name,
                    source,
                },
                DumpError::Malformed(m) => SockDiagError::Malformed(m),
            })?;
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Aborts one socket found by [`SockDiag::connections`]: the kernel
    /// sends a reset if it can, and its owner's next call fails with
    /// ECONNABORTED. A socket already gone is not an error.
    #[instrument(level = "debug", skip(self), fields(local = %conn.local, remote = %conn.remote))]
    pub fn destroy(&mut self, conn: &TcpConn) -> Result<(), SockDiagError> {
        let req = request(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            self.next_seq(),
            conn.raw.family,
            u32::MAX,
            &conn.raw.sockid,
        );
        let fail = |source| SockDiagError::Destroy {
            local: conn.local,
            remote: conn.remote,
            source,
        };
        self.send(&req).map_err(fail)?;
        let mut buf = vec![0u8; 4096];
        let n = self.recv(&mut buf).map_err(fail)?;
        match parse_ack(&buf[..n]) {
            Ok(0) => Ok(()),
            Ok(errno) if errno == libc::ENOENT => Ok(()),
            Ok(errno) => Err(fail(io::Error::from_raw_os_error(errno))),
            Err(m) => Err(SockDiagError::Malformed(m)),
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, req: &[u8]) -> io::Result<()> {
        // SAFETY: an all-zero sockaddr_nl is valid; nl_family set below.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: req and kernel outlive the call; sizes are theirs.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&raw const kernel).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn read_dump(&self, vips: &BTreeSet<IpAddr>, out: &mut Vec<TcpConn>) -> Result<(), DumpError> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.recv(&mut buf).map_err(DumpError::Io)?;
            match parse_dump(&buf[..n], vips, out).map_err(DumpError::Malformed)? {
                DumpPart::More => {}
                DumpPart::Done => return Ok(()),
                DumpPart::Error(errno) => {
                    return Err(DumpError::Io(io::Error::from_raw_os_error(errno)));
                }
            }
        }
    }
}

enum DumpError {
    Io(io::Error),
    Malformed(&'static str),
}

/// One netlink request: header, then an `inet_diag_req_v2` for TCP.
fn request(
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    states: u32,
    sockid: &[u8; SOCKID_LEN],
) -> Vec<u8> {
    let len = NLMSG_HDR_LEN + REQ_LEN;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.push(family);
    b.push(libc::IPPROTO_TCP as u8);
    b.push(0);
    b.push(0);
    b.extend_from_slice(&states.to_ne_bytes());
    b.extend_from_slice(sockid);
    b
}

enum DumpPart {
    More,
    Done,
    Error(i32),
}

/// The netlink messages in one datagram of a dump: each socket whose
/// local address is in `vips` lands in `out`.
fn parse_dump(
    mut buf: &[u8],
    vips: &BTreeSet<IpAddr>,
    out: &mut Vec<TcpConn>,
) -> Result<DumpPart, &'static str> {
    while buf.len() >= NLMSG_HDR_LEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        if len < NLMSG_HDR_LEN || len > buf.len() {
            return Err("netlink message length out of bounds");
        }
        let body = &buf[NLMSG_HDR_LEN..len];
        match kind {
            NLMSG_DONE => return Ok(DumpPart::Done),
            NLMSG_ERROR => {
                let errno = error_code(body)?;
                return Ok(DumpPart::Error(errno));
            }
            SOCK_DIAG_BY_FAMILY => {
                if let Some(conn) = parse_msg(body)?
                    && vips.contains(&conn.local.ip())
                {
                    out.push(conn);
                }
            }
            _ => {}
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        buf = &buf[next.min(buf.len())..];
    }
    Ok(DumpPart::More)
}

/// The errno of an NLMSG_ERROR body (0: an acknowledgement).
fn error_code(body: &[u8]) -> Result<i32, &'static str> {
    let code = body.get(0..4).ok_or("short netlink error message")?;
    Ok(-i32::from_ne_bytes(code.try_into().expect("4 bytes")))
}

/// The errno of the acknowledgement of one request.
fn parse_ack(buf: &[u8]) -> Result<i32, &'static str> {
    if buf.len() < NLMSG_HDR_LEN {
        return Err("short netlink acknowledgement");
    }
    let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
    if kind != NLMSG_ERROR {
        return Err("netlink answer to a request is not an acknowledgement");
    }
    error_code(&buf[NLMSG_HDR_LEN..])
}

/// One `inet_diag_msg`: its socket, addresses as the socket's family
/// says (a v4-mapped IPv6 address as IPv4).
fn parse_msg(body: &[u8]) -> Result<Option<TcpConn>, &'static str> {
    if body.len() < MSG_LEN {
        return Err("short inet_diag_msg");
    }
    let family = body[0];
    let state = body[1];
    let sockid: [u8; SOCKID_LEN] = body[4..4 + SOCKID_LEN].try_into().expect("sockid");
    let sport = u16::from_be_bytes([sockid[0], sockid[1]]);
    let dport = u16::from_be_bytes([sockid[2], sockid[3]]);
    let (src, dst) = match i32::from(family) {
        libc::AF_INET => (
            IpAddr::V4(Ipv4Addr::from(
                <[u8; 4]>::try_from(&sockid[4..8]).expect("4"),
            )),
            IpAddr::V4(Ipv4Addr::from(
                <[u8; 4]>::try_from(&sockid[20..24]).expect("4"),
            )),
        ),
        libc::AF_INET6 => {
            let v6 = |b: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16"));
            (unmap(v6(&sockid[4..20])), unmap(v6(&sockid[20..36])))
        }
        _ => return Ok(None),
    };
    Ok(Some(TcpConn {
        local: SocketAddr::new(src, sport),
        remote: SocketAddr::new(dst, dport),
        state,
        raw: RawId { family, sockid },
    }))
}

fn unmap(a: Ipv6Addr) -> IpAddr {
    match a.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sockid(sport: u16, dport: u16, src: &[u8], dst: &[u8]) -> [u8; SOCKID_LEN] {
        let mut id = [0u8; SOCKID_LEN];
        id[0..2].copy_from_slice(&sport.to_be_bytes());
        id[2..4].copy_from_slice(&dport.to_be_bytes());
        id[4..4 + src.len()].copy_from_slice(src);
        id[20..20 + dst.len()].copy_from_slice(dst);
        id[40..44].copy_from_slice(&7u32.to_ne_bytes());
        id[44..48].copy_from_slice(&0xdead_beefu32.to_ne_bytes());
        id
    }

    /// A netlink message carrying an `inet_diag_msg` for `id`, with an
    /// attribute after it as the kernel sends (which the parser skips).
    fn diag_msg(family: u8, state: u8, id: [u8; SOCKID_LEN]) -> Vec<u8> {
        let mut body = vec![family, state, 0, 0];
        body.extend_from_slice(&id);
        body.extend_from_slice(&[0u8; 20]);
        body.extend_from_slice(&[5, 0, 1, 0, 9, 0, 0, 0]);
        let len = NLMSG_HDR_LEN + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(&body);
        m
    }

    fn done() -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&20u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        m.extend_from_slice(&[0u8; 14]);
        m
    }

    #[test]
    fn a_dump_keeps_the_vips_sockets_of_both_families_and_unmaps() {
        let vip4: IpAddr = "192.0.2.10".parse().unwrap();
        let vip6: IpAddr = "2001:db8::10".parse().unwrap();
        let other6: Ipv6Addr = "2001:db8::99".parse().unwrap();
        let mapped: Ipv6Addr = "::ffff:192.0.2.10".parse().unwrap();
        let client_mapped: Ipv6Addr = "::ffff:192.0.2.50".parse().unwrap();
        let mut buf = diag_msg(
            libc::AF_INET as u8,
            TCP_ESTABLISHED,
            sockid(80, 40000, &[192, 0, 2, 10], &[192, 0, 2, 50]),
        );
        buf.extend(diag_msg(
            libc::AF_INET as u8,
            TCP_ESTABLISHED,
            sockid(80, 40001, &[192, 0, 2, 11], &[192, 0, 2, 50]),
        ));
        buf.extend(diag_msg(
            libc::AF_INET6 as u8,
            TCP_ESTABLISHED,
            sockid(443, 40002, &mapped.octets(), &client_mapped.octets()),
        ));
        buf.extend(diag_msg(
            libc::AF_INET6 as u8,
            TCP_ESTABLISHED,
            sockid(22, 40003, &other6.octets(), &other6.octets()),
        ));
        let v6_client: Ipv6Addr = "2001:db8::50".parse().unwrap();
        buf.extend(diag_msg(
            libc::AF_INET6 as u8,
            TCP_ESTABLISHED,
            sockid(
                22,
                40004,
                &"2001:db8::10".parse::<Ipv6Addr>().unwrap().octets(),
                &v6_client.octets(),
            ),
        ));
        buf.extend(done());
        let vips = BTreeSet::from([vip4, vip6]);
        let mut out = Vec::new();
        assert!(matches!(
            parse_dump(&buf, &vips, &mut out),
            Ok(DumpPart::Done)
        ));
        let pairs: Vec<(String, String)> = out
            .iter()
            .map(|c| (c.local.to_string(), c.remote.to_string()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("192.0.2.10:80", "192.0.2.50:40000"),
                ("192.0.2.10:443", "192.0.2.50:40002"),
                ("[2001:db8::10]:22", "[2001:db8::50]:40004"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        // Destroy finds the socket by what the kernel said, cookie included.
        assert_eq!(out[1].raw.family, libc::AF_INET6 as u8);
        assert_eq!(&out[1].raw.sockid[44..48], &0xdead_beefu32.to_ne_bytes());
    }

    #[test]
    fn truncated_and_error_messages_are_refused_or_reported() {
        let vips = BTreeSet::from(["192.0.2.10".parse().unwrap()]);
        let mut out = Vec::new();
        let mut msg = diag_msg(
            libc::AF_INET as u8,
            1,
            sockid(1, 2, &[192, 0, 2, 10], &[0; 4]),
        );
        msg.truncate(40);
        assert!(parse_dump(&msg, &vips, &mut out).is_err());
        let mut bad_len = diag_msg(libc::AF_INET as u8, 1, [0; SOCKID_LEN]);
        bad_len[0..4].copy_from_slice(&9999u32.to_ne_bytes());
        assert!(parse_dump(&bad_len, &vips, &mut out).is_err());
        let mut err = Vec::new();
        err.extend_from_slice(&36u32.to_ne_bytes());
        err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err.extend_from_slice(&[0u8; 10]);
        err.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        err.extend_from_slice(&[0u8; 16]);
        assert!(
            matches!(parse_dump(&err, &vips, &mut out), Ok(DumpPart::Error(e)) if e == libc::EPERM)
        );
        assert_eq!(parse_ack(&err), Ok(libc::EPERM));
        assert!(out.is_empty());
    }

    #[test]
    fn requests_are_laid_out_as_inet_diag_req_v2() {
        let id = sockid(80, 40000, &[192, 0, 2, 10], &[192, 0, 2, 50]);
        let r = request(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            9,
            libc::AF_INET as u8,
            u32::MAX,
            &id,
        );
        assert_eq!(r.len(), 72);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 72);
        assert_eq!(
            u16::from_ne_bytes(r[4..6].try_into().unwrap()),
            SOCK_DESTROY
        );
        assert_eq!(r[16], libc::AF_INET as u8);
        assert_eq!(r[17], libc::IPPROTO_TCP as u8);
        assert_eq!(&r[24..], &id);
        // Listeners and TIME_WAIT are never in the abort set.
        assert_eq!(CONNECTED & (1 << TCP_LISTEN), 0);
        assert_eq!(CONNECTED & (1 << TCP_TIME_WAIT), 0);
        assert_ne!(CONNECTED & ESTABLISHED, 0);
    }
}

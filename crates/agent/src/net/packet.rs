//! A raw link-layer (AF_PACKET) socket on one interface that sees only DHCP requests, and
//! the Ethernet/IPv4/UDP framing of DHCP replies (`etherparse`).
//!
//! The DHCP responder listens on a VM's tap, not on the bridge: frames the guest sends
//! arrive here whatever their destination (so unicast renewals to any server address are
//! seen too), and a reply written to the tap goes to that guest alone — no other VM on the
//! bridge ever sees it. A classic BPF filter in the kernel passes only IPv4 UDP to port 67,
//! so a busy guest's other traffic never wakes the agent. Frames the host itself sends on
//! the interface (our replies, other VMs' floods) are skipped.
//!
//! Neither rustix nor socket2 bind link-layer addresses or attach socket filters, so this
//! module calls libc directly; each `unsafe` block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use etherparse::{LinkSlice, PacketBuilder, SlicedPacket, TransportSlice};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Every protocol: a socket bound to one protocol only sees frames after the device's
/// rx handler, and a bridge port's handler (the bridge) consumes them all. The BPF filter
/// narrows "everything" down to DHCP requests in the kernel.
const ETH_P_ALL: u16 = 0x0003;
const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;

/// `udp dst port 67` over Ethernet (as `tcpdump -dd` compiles it, IPv4 only, first fragments).
const FILTER: [libc::sock_filter; 11] = [
    op(0x28, 0, 0, 12),     // ldh [12]              ethertype
    op(0x15, 0, 8, 0x0800), // jeq #IPv4        else drop
    op(0x30, 0, 0, 23),     // ldb [23]              IP protocol
    op(0x15, 0, 6, 17),     // jeq #UDP         else drop
    op(0x28, 0, 0, 20),     // ldh [20]              flags + fragment offset
    op(0x45, 4, 0, 0x1fff), // jset #0x1fff     a later fragment: drop
    op(0xb1, 0, 0, 14),     // ldxb 4*([14]&0xf)     IP header length
    op(0x48, 0, 0, 16),     // ldh [x+16]            UDP destination port
    op(0x15, 0, 1, 67),     // jeq #67          else drop
    op(0x06, 0, 0, 0xffff), // ret #65535            accept
    op(0x06, 0, 0, 0),      // ret #0                drop
];

const fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// A DHCP request as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub src_mac: [u8; 6],
    pub payload: &'a [u8],
}

/// Picks the DHCP payload out of a frame (UDP to port 67), or `None`.
pub fn parse(frame: &[u8]) -> Option<Request<'_>> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let src_mac = match p.link? {
        LinkSlice::Ethernet2(e) => e.source(),
        _ => return None,
    };
    match p.transport? {
        TransportSlice::Udp(u) if u.destination_port() == DHCP_SERVER_PORT => Some(Request { src_mac, payload: u.payload() }),
        _ => None,
    }
}

/// A DHCP reply frame from `src` (the host side) to the guest.
pub fn frame(src_mac: [u8; 6], src_ip: Ipv4Addr, dst_mac: [u8; 6], dst_ip: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src_ip.octets(), dst_ip.octets(), 64).udp(DHCP_SERVER_PORT, DHCP_CLIENT_PORT);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    // Writing into a Vec cannot fail; a payload too large for UDP is refused here.
    match b.write(&mut out, payload) {
        Ok(()) => out,
        Err(e) => {
            tracing::warn!(error = %e, "a DHCP reply could not be framed");
            Vec::new()
        }
    }
}

/// The interface's MAC address (`/sys/class/net/IFACE/address`).
pub fn interface_mac(iface: &str) -> Option<[u8; 6]> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{iface}/address")).ok()?;
    super::dhcp::parse_mac(s.trim())
}

/// An AF_PACKET socket bound to one interface, filtered to DHCP requests.
pub struct PacketSocket {
    fd: AsyncFd<OwnedFd>,
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

impl PacketSocket {
    /// Opens the socket on `iface` (which must exist).
    pub fn open(iface: &str) -> io::Result<Self> {
        let name = CString::new(iface).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
        // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        // Protocol 0: nothing is received until the filter is attached and the socket bound,
        // so no unfiltered frame slips in between.
        // SAFETY: plain syscall with constant arguments; the result is checked.
        let raw = check(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        let prog = libc::sock_fprog { len: FILTER.len() as u16, filter: FILTER.as_ptr().cast_mut() };
        // SAFETY: `prog` points at FILTER (static) for the call's duration; the kernel copies it.
        check(unsafe {
            libc::setsockopt(
                owned.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&prog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        })?;
        // SAFETY: an all-zero sockaddr_ll is a valid value of the plain C struct.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = index as i32;
        // SAFETY: `sll` is a valid sockaddr_ll and its size is passed with it.
        check(unsafe {
            libc::bind(
                owned.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        // SAFETY: `owned` is an open descriptor that the AsyncFd owns from here on and that
        // nothing else can close or replace; OwnedFd::as_raw_fd always returns it.
        let fd = unsafe { AsyncFd::register(owned) }.map_err(|e| e.into_parts().1)?;
        Ok(PacketSocket { fd })
    }

    /// The next frame the guest sent (frames the host sent out on the interface are skipped).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let r = self
                .fd
                .async_io(Interest::READABLE, |fd| {
                    // SAFETY: an all-zero sockaddr_ll is valid; `from` and `len` outlive the call.
                    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                    // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
                    let n = unsafe {
                        libc::recvfrom(
                            fd.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            0,
                            (&mut from as *mut libc::sockaddr_ll).cast(),
                            &mut len,
                        )
                    };
                    if n < 0 { Err(io::Error::last_os_error()) } else { Ok((n as usize, from.sll_pkttype)) }
                })
                .await?;
            if r.1 != libc::PACKET_OUTGOING {
                return Ok(r.0);
            }
        }
    }

    /// Sends one frame out of the interface (to the guest, on a tap).
    pub async fn send(&self, frame: &[u8]) -> io::Result<()> {
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                // SAFETY: `frame` is valid for `frame.len()` bytes of reads.
                let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
                if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_reply_parses_back_and_only_udp_to_67_counts() {
        let payload = b"dhcp bytes";
        let guest = [0x90, 0xb8, 0xd0, 1, 2, 3];
        let reply = frame([2, 0, 0, 0, 0, 1], "10.88.0.1".parse().unwrap(), guest, Ipv4Addr::BROADCAST, payload);
        // Our reply goes to port 68: not a request.
        assert_eq!(parse(&reply), None);
        // A request: the same framing the other way round.
        let b = PacketBuilder::ethernet2(guest, [0xff; 6]).ipv4([0; 4], [255; 4], 64).udp(68, 67);
        let mut req = Vec::new();
        b.write(&mut req, payload).unwrap();
        assert_eq!(parse(&req), Some(Request { src_mac: guest, payload }));
        assert_eq!(parse(&req[..20]), None);
        assert_eq!(interface_mac("lo"), Some([0; 6]));
    }
}

//! Source addresses for many client connections to a service on this
//! machine's loopback, for the flash sale's buyers (`flash_sale.rs`) and
//! `conn_bench`: as clients come from many addresses, each connection
//! comes from one of 4,096 in 127.1.0.0/16. From one address, 20,000
//! connections to one port fill the kernel's ephemeral port range: each
//! `connect` then searched it for a free port (45 % of the generator's CPU
//! during the sale's arrivals, perf), and the `TIME_WAIT`s a run leaves
//! kept it full for 60 s, so a second run within the minute could not
//! connect at all (`EADDRNOTAVAIL`).

use std::net::{IpAddr, Ipv4Addr};

/// The source address of client `index` when the service is at `server`,
/// or `None` (the kernel's choice) when `server` is not on the IPv4
/// loopback.
pub fn source(server: IpAddr, index: usize) -> Option<IpAddr> {
    let n = (index % 4_096) as u32;
    (server.is_loopback() && server.is_ipv4())
        .then(|| Ipv4Addr::from(0x7f01_0000 | (n / 64) << 8 | (n % 64 + 1)).into())
}

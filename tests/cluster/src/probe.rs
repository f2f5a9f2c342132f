//! Probes run from inside a pod's namespace by the tests and benchmarks (on a thread that has
//! entered it, see `svcplane_testenv::netns::enter`).

use std::net::UdpSocket;
use std::time::Duration;

use crate::agent::CLUSTER_DNS;

/// Asks the cluster DNS for `name` A over UDP from a fresh socket (a new source port, as stub
/// resolvers use); `Ok` on NOERROR with at least one answer within `timeout`.
pub fn dns_a(name: &str, timeout: Duration) -> Result<(), String> {
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut query = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(u8::try_from(label.len()).map_err(|e| e.to_string())?);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    socket
        .send_to(&query, (CLUSTER_DNS, 53))
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 1500];
    let n = socket
        .recv(&mut buf)
        .map_err(|e| format!("no answer: {e}"))?;
    let (rcode, answers) = (buf[3] & 0x0f, u16::from_be_bytes([buf[6], buf[7]]));
    if n < 12 || rcode != 0 || answers == 0 {
        return Err(format!("rcode {rcode}, {answers} answers"));
    }
    Ok(())
}

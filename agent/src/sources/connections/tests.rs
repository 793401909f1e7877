use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
};

use super::*;
use crate::sources::fixture;

const TCP_HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     \n";
const TCP6_HEADER: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

/// A socket line as the kernel prints it, with the fields after `st` as on a
/// real host.
fn line(sl: usize, local: &str, remote: &str, state: &str) -> String {
    format!(
        "{sl:>4}: {local} {remote} {state} 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000026f0b9b6 100 0 0 10 0                       \n",
        inode = 4000 + sl
    )
}

/// Encodes an address the way the kernel does: each 32-bit word of the IP
/// in host byte order, the port big-endian.
fn encode(addr: SocketAddr) -> String {
    let words: Vec<[u8; 4]> = match addr.ip() {
        IpAddr::V4(v4) => vec![v4.octets()],
        IpAddr::V6(v6) => v6
            .octets()
            .chunks(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect(),
    };
    let ip: String = words
        .iter()
        .map(|w| format!("{:08X}", u32::from_ne_bytes(*w)))
        .collect();
    format!("{ip}:{:04X}", addr.port())
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// A real server with the VIP 10.0.0.100 on loopback (direct server return),
/// its own address 192.168.1.10, serving port 80 on IPv4 and dual-stack IPv6
/// and 8080 on IPv6.
#[cfg(target_endian = "little")]
fn write_fixture(root: &Path) {
    let tcp = [
        // LISTEN 0.0.0.0:80
        line(0, "00000000:0050", "00000000:0000", "0A"),
        // client 192.168.1.7:51000 -> VIP 10.0.0.100:80
        line(1, "6400000A:0050", "0701A8C0:C738", "01"),
        // the agent's probe from the VIP itself
        line(2, "6400000A:0050", "6400000A:9C40", "01"),
        // the agent's probe over loopback, server side and client side
        line(3, "0100007F:0050", "0100007F:9C41", "01"),
        line(4, "0100007F:9C41", "0100007F:0050", "01"),
        // client 192.168.1.8 -> the server's own address
        line(5, "0A01A8C0:0050", "0801A8C0:CB20", "01"),
        // closing connection on the VIP: TIME_WAIT
        line(6, "6400000A:0050", "0901A8C0:CB21", "06"),
        // the server's own outgoing connection to a database
        line(7, "0A01A8C0:AFC8", "1401A8C0:1538", "01"),
    ]
    .concat();
    let tcp6 = [
        // LISTEN [::]:8080
        line(
            0,
            "00000000000000000000000000000000:1F90",
            "00000000000000000000000000000000:0000",
            "0A",
        ),
        // [2001:db8::5]:50000 -> [2001:db8::100]:8080
        line(
            1,
            "B80D0120000000000000000000010000:1F90",
            "B80D0120000000000000000005000000:C350",
            "01",
        ),
        // dual-stack: 192.168.1.11 -> VIP:80 as ::ffff:10.0.0.100
        line(
            2,
            "0000000000000000FFFF00006400000A:0050",
            "0000000000000000FFFF00000B01A8C0:C351",
            "01",
        ),
        // probe over ::1
        line(
            3,
            "00000000000000000000000001000000:1F90",
            "00000000000000000000000001000000:C352",
            "01",
        ),
        // handshake in progress: SYN_RECV
        line(
            4,
            "B80D0120000000000000000000010000:1F90",
            "B80D0120000000000000000006000000:C353",
            "03",
        ),
    ]
    .concat();
    fixture::write(root, "proc/net/tcp", &format!("{TCP_HEADER}{tcp}"));
    fixture::write(root, "proc/net/tcp6", &format!("{TCP6_HEADER}{tcp6}"));
}

#[test]
#[cfg(target_endian = "little")]
fn fixture_addresses_are_what_the_kernel_prints() {
    assert_eq!(encode(addr("10.0.0.100:80")), "6400000A:0050");
    assert_eq!(encode(addr("192.168.1.7:51000")), "0701A8C0:C738");
    assert_eq!(
        encode(addr("[2001:db8::100]:8080")),
        "B80D0120000000000000000000010000:1F90"
    );
    assert_eq!(
        encode(addr("[::ffff:192.168.1.11]:50001")),
        "0000000000000000FFFF00000B01A8C0:C351"
    );
    assert_eq!(
        encode(addr("[::1]:50002")),
        "00000000000000000000000001000000:C352"
    );
}

#[test]
fn parses_ipv4_and_ipv6_lines() {
    let text = format!(
        "{TCP6_HEADER}{}{}",
        line(
            0,
            &encode(addr("[2001:db8::100]:8080")),
            &encode(addr("[2001:db8::5]:50000")),
            "01"
        ),
        line(
            1,
            &encode(addr("[::ffff:10.0.0.100]:80")),
            &encode(addr("[::ffff:192.168.1.11]:50001")),
            "0A"
        ),
    );
    let sockets = parse(&text, Path::new("proc/net/tcp")).expect("parse");
    assert_eq!(
        sockets,
        [
            TcpSocket {
                local: addr("[2001:db8::100]:8080"),
                remote: addr("[2001:db8::5]:50000"),
                state: TcpState::ESTABLISHED,
            },
            TcpSocket {
                // Mapped addresses come back as IPv4.
                local: addr("10.0.0.100:80"),
                remote: addr("192.168.1.11:50001"),
                state: TcpState::LISTEN,
            },
        ]
    );
    let text = format!(
        "{TCP_HEADER}{}",
        line(
            0,
            &encode(addr("127.0.0.1:8080")),
            &encode(addr("127.0.0.1:50000")),
            "01"
        )
    );
    assert_eq!(
        parse(&text, Path::new("proc/net/tcp")).expect("parse")[0].local,
        addr("127.0.0.1:8080")
    );
}

#[test]
#[cfg(target_endian = "little")]
fn counts_established_per_listening_port_and_on_vip() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_fixture(dir.path());
    let counts = count_established(dir.path(), &ConnectionQuery::for_vip(addr("10.0.0.100:80")))
        .expect("count");
    // Port 80: the VIP client, the client on the own address and the
    // dual-stack client; 8080: the IPv6 client. Probes, TIME_WAIT, SYN_RECV
    // and the outgoing connection are left out.
    assert_eq!(counts.per_port, BTreeMap::from([(80, 3), (8080, 1)]));
    assert_eq!(counts.on_vip, 2);
    assert_eq!(counts.total(), 4);
}

#[test]
#[cfg(target_endian = "little")]
fn exclusions_and_ports_are_parameters() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_fixture(dir.path());
    // Without exclusions the probes count: the VIP probe and the loopback
    // probes on 80 and 8080.
    let query = ConnectionQuery {
        vip: Some(addr("10.0.0.100:80")),
        ..ConnectionQuery::default()
    };
    let counts = count_established(dir.path(), &query).expect("count");
    assert_eq!(counts.per_port, BTreeMap::from([(80, 5), (8080, 2)]));
    assert_eq!(counts.on_vip, 3);

    // Explicit ports: only those, listening or not; the IPv4-mapped form of
    // an excluded address is excluded too.
    let query = ConnectionQuery {
        ports: BTreeSet::from([80, 5432, 45000]),
        vip: None,
        excluded_remotes: BTreeSet::from([addr("[::ffff:192.168.1.7]:0").ip()]),
    };
    let counts = count_established(dir.path(), &query).expect("count");
    assert_eq!(counts.per_port, BTreeMap::from([(80, 4), (45000, 1)]));
    assert_eq!(counts.on_vip, 0);
}

#[test]
fn missing_tcp6_is_empty_and_bad_lines_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = count_established(dir.path(), &ConnectionQuery::default()).expect_err("no tcp");
    assert!(err.to_string().contains("proc/net/tcp"), "{err}");

    let v4 = format!(
        "{TCP_HEADER}{}",
        line(
            0,
            &encode(addr("10.1.1.1:80")),
            &encode(addr("10.1.1.2:9")),
            "01"
        )
    );
    fixture::write(dir.path(), "proc/net/tcp", &v4);
    let counts = count_established(
        dir.path(),
        &ConnectionQuery {
            ports: BTreeSet::from([80]),
            ..ConnectionQuery::default()
        },
    )
    .expect("count");
    assert_eq!(counts.total(), 1);

    for bad in [
        "   0: 0100007F:0050\n",
        "   0: 0100007F 0100007F:0050 01\n",
        "   0: 0100007F:0050 0100007:0050 01\n",
        "   0: 0100007F:0050 0100007F:0050 ZZ\n",
        "   0: 0100007F:XYZW 0100007F:0050 01\n",
    ] {
        fixture::write(dir.path(), "proc/net/tcp6", &format!("{TCP6_HEADER}{bad}"));
        let err = count_established(dir.path(), &ConnectionQuery::default()).expect_err(bad);
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}

#[test]
fn real_loopback_connections_are_seen_and_probes_excluded() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    client.write_all(b"x").expect("write");
    let mut byte = [0u8; 1];
    server.read_exact(&mut byte).expect("read");

    let root = Path::new(crate::sources::HOST_ROOT);
    let all = ConnectionQuery {
        ports: BTreeSet::from([port]),
        ..ConnectionQuery::default()
    };
    let counts = count_established(root, &all).expect("count");
    assert_eq!(counts.per_port.get(&port), Some(&1), "{counts:?}");

    let listening = ConnectionQuery {
        vip: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        ..ConnectionQuery::default()
    };
    let counts = count_established(root, &listening).expect("count");
    assert_eq!(counts.per_port.get(&port), Some(&1), "{counts:?}");
    assert_eq!(counts.on_vip, 1, "{counts:?}");

    let probes_excluded = ConnectionQuery {
        excluded_remotes: probe_sources(None),
        ..all
    };
    let counts = count_established(root, &probes_excluded).expect("count");
    assert_eq!(counts.per_port.get(&port), None, "{counts:?}");
}

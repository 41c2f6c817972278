//! The services a VIP is for (issue 16), in the lab: every node runs
//! Debian's `tgtd` (one target, one LUN backed by one image file all nodes
//! share) and `busybox httpd` on the wildcard address; a client reaches
//! them with libiscsi's user-space tools and `busybox wget`.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use vipd_tests::{
    lab::{HostIf, Lab},
    services::{
        IMAGE_SIZE, MULTIPATH_LAST_FILL, Services, console_get, image_fill, read_capacity,
        write_and_compare,
    },
};

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Blocks the multipath compare covers (LBA 0..256).
const COMPARED_BLOCKS: usize = 256;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
fn services_answer_on_every_node_and_stop_with_the_lab() {
    let lab = Lab::new("svc-basic");
    let nodes: Vec<_> = (1..=2)
        .map(|i| {
            lab.add_host(
                &format!("n{i}"),
                &[HostIf {
                    bridge: 0,
                    addr: &format!("192.0.2.{}/24", 10 + i),
                }],
            )
        })
        .collect();
    let client = lab.add_host(
        "client",
        &[HostIf {
            bridge: 0,
            addr: "192.0.2.50/24",
        }],
    );
    let refs: Vec<_> = nodes.iter().collect();
    let mut svc = Services::start(lab.dir(), &refs);
    let addrs = [ip("192.0.2.11"), ip("192.0.2.12")];
    for (i, &addr) in addrs.iter().enumerate() {
        assert_eq!(
            console_get(&client, addr, PROBE_TIMEOUT).as_deref(),
            Some(nodes[i].name()),
            "console of {}",
            nodes[i].name()
        );
        assert_eq!(
            read_capacity(&client, addr, Duration::from_secs(5)),
            Some(IMAGE_SIZE),
            "LUN through {addr}"
        );
        assert_eq!(
            svc.target(i).backing_stores(),
            vec![svc.image().to_path_buf()]
        );
    }
    // Written through n1's target, read back byte for byte through n2's:
    // the LUN is the one shared image.
    assert_eq!(image_fill(svc.image(), COMPARED_BLOCKS), Some(0));
    let run = write_and_compare(&client, addrs);
    eprintln!(
        "[svc-basic] multipath compare: {} asserts passed",
        run.asserts_passed
    );
    assert_eq!(
        image_fill(svc.image(), COMPARED_BLOCKS),
        Some(MULTIPATH_LAST_FILL)
    );
    // A wrong address fails as a failure, not a hang.
    assert_eq!(
        read_capacity(&client, ip("192.0.2.99"), PROBE_TIMEOUT),
        None
    );
    assert_eq!(console_get(&client, ip("192.0.2.99"), PROBE_TIMEOUT), None);

    let pids: Vec<u32> = (0..2).map(|i| svc.target(i).process.pid()).collect();
    let ports: Vec<u32> = (0..2).map(|i| svc.target(i).control_port).collect();
    let procs: Vec<_> = (0..2).map(|i| svc.target(i).process.clone()).collect();
    let stopped = Instant::now();
    svc.stop();
    eprintln!(
        "[svc-basic] tgtd {pids:?} and the consoles stopped in {:.0} ms",
        ms(stopped.elapsed())
    );
    for (p, port) in procs.iter().zip(&ports) {
        assert!(!p.is_running(), "tgtd {} still running", p.pid());
        for f in [
            format!("/var/run/tgtd/socket.{port}"),
            format!("/var/run/tgtd/socket.{port}.lock"),
        ] {
            assert!(!std::path::Path::new(&f).exists(), "{f} left behind");
        }
    }
    assert_eq!(console_get(&client, addrs[0], PROBE_TIMEOUT), None);
}

//! The Docker plugin's socket and the metrics endpoint under hostile HTTP and descriptor
//! exhaustion: every malformed request gets an answer or a closed connection (never an
//! abort, never unbounded memory), and a process out of descriptors keeps serving once
//! idle connections are closed, without spinning a CPU.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use dataplane_tests::{
    lab::Host,
    plugin::{exchange, in_ns, post, read_answer, wait_for, Server, TempDir},
};

#[test]
fn the_plugin_socket_answers_hostile_http_and_outlives_descriptor_exhaustion() {
    let h = Host::new("dpHp").unwrap();
    let dir = TempDir::new("dphttp-");
    let sock = dir.0.join("dataplane.sock");
    let mut s = Server::start(&h, &["plugin", "docker", "--socket", sock.to_str().unwrap()], 96, 1500);
    wait_for("the plugin's socket", Duration::from_secs(20), || UnixStream::connect(&sock).is_ok());

    let ok = exchange(&sock, &post("Plugin.Activate", ""));
    assert!(ok.starts_with("HTTP/1.1 200") && ok.contains("NetworkDriver"), "{ok}");
    // A body larger than memory, announced: refused before a byte of it is read.
    let huge = exchange(&sock, b"POST /Plugin.Activate HTTP/1.1\r\nContent-Length: 99999999999999999\r\n\r\n{}");
    assert!(huge.starts_with("HTTP/1.1 413") && huge.contains("over the limit"), "{huge}");
    // Lengths that are not lengths: an answer, not a silently closed connection.
    for bad in ["abc", "-5", "1, 2"] {
        let a =
            exchange(&sock, format!("POST /Plugin.Activate HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n{{}}").as_bytes());
        assert!(a.starts_with("HTTP/1.1 400"), "Content-Length {bad:?}: {a:?}");
    }
    // A header line that never ends: the connection is answered or closed long before
    // 32 MiB, and the process does not grow with it.
    let rss = s.rss_kib();
    let mut c = UnixStream::connect(&sock).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"POST /Plugin.Activate HTTP/1.1\r\nX-Long: ").unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0usize;
    while sent < 32 << 20 {
        match c.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(sent < 32 << 20, "the plugin read a 32 MiB header line");
    assert!(s.rss_kib() < rss + 8 * 1024, "the plugin grew from {rss} KiB to {} KiB", s.rss_kib());
    assert!(s.alive(), "the plugin died: {}", s.log());

    // Out of descriptors: 150 idle connections against a limit of 96.
    let idle: Vec<UnixStream> = (0..150).map(|_| UnixStream::connect(&sock).unwrap()).collect();
    wait_for("the plugin to report it cannot accept", Duration::from_secs(10), || {
        s.log().contains("cannot accept a connection")
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(s.alive(), "the plugin exited when out of descriptors: {}", s.log());
    assert!(sock.exists(), "the plugin removed its socket");
    // Idle connections are closed (1.5 s here), the backlog is drained, and a new client
    // is served.
    let start = Instant::now();
    let mut answered = String::new();
    while start.elapsed() < Duration::from_secs(30) && !answered.starts_with("HTTP/1.1 200") {
        answered = exchange(&sock, &post("Plugin.Activate", ""));
    }
    assert!(answered.starts_with("HTTP/1.1 200"), "no answer after exhaustion: {answered:?}\n{}", s.log());
    assert!(s.log().contains("accepting connections again"), "{}", s.log());
    drop(idle);
    assert!(s.alive());
    drop(s);
}

#[test]
fn the_metrics_server_neither_spins_nor_starves_when_out_of_descriptors() {
    let h = Host::new("dpHm").unwrap();
    let addr = "127.0.0.1:9481";
    let mut s = Server::start(&h, &["metrics", "--listen", addr], 64, 1500);
    let get = || -> String {
        in_ns(&h, || match std::net::TcpStream::connect(addr) {
            Ok(mut c) => {
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                read_answer(&mut c)
            }
            Err(e) => format!("connect: {e}"),
        })
    };
    wait_for("the metrics endpoint", Duration::from_secs(20), || get().starts_with("HTTP/1.1 200"));
    // A client that connects and says nothing is closed (after the idle time here).
    let silent = in_ns(&h, || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let t = Instant::now();
        let mut b = [0u8; 16];
        let n = c.read(&mut b).unwrap_or(usize::MAX);
        (n, t.elapsed())
    });
    assert_eq!(silent.0, 0, "a silent client was not closed");
    assert!(silent.1 < Duration::from_secs(15), "closed only after {:?}", silent.1);

    let idle = in_ns(&h, || (0..100).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect::<Vec<_>>());
    wait_for("the server to report it cannot accept", Duration::from_secs(10), || {
        s.log().contains("cannot accept a connection")
    });
    // While out of descriptors it waits instead of retrying in a loop.
    let before = s.cpu();
    std::thread::sleep(Duration::from_secs(1));
    let used = s.cpu() - before;
    assert!(used < Duration::from_millis(300), "{used:?} of CPU in 1 s while out of descriptors");
    assert!(s.alive(), "{}", s.log());
    let start = Instant::now();
    let mut answered = String::new();
    while start.elapsed() < Duration::from_secs(30) && !answered.starts_with("HTTP/1.1 200") {
        answered = get();
    }
    assert!(answered.starts_with("HTTP/1.1 200") && answered.contains("dataplane_build_info"), "{answered:?}");
    drop(idle);
}

/// Docker repeats a CreateEndpoint it did not see answered: the same request gets the same
/// endpoint, but the same id with another address is a conflict, not the old endpoint.
#[test]
fn a_repeated_create_endpoint_with_another_address_is_refused() {
    let (h, _sw) = dataplane_tests::lab::host_with_switch("dpHe").unwrap();
    let dir = TempDir::new("dphttp-");
    let sock = dir.0.join("dataplane.sock");
    let s = Server::start(&h, &["plugin", "docker", "--socket", sock.to_str().unwrap()], 1024, 60_000);
    wait_for("the plugin's socket", Duration::from_secs(20), || UnixStream::connect(&sock).is_ok());
    let body = |a: &str| {
        String::from_utf8(post(
            "NetworkDriver.CreateEndpoint",
            &format!(r#"{{"NetworkID":"net81","EndpointID":"ep1","Interface":{{"Address":"{a}","AddressIPv6":"","MacAddress":""}}}}"#),
        ))
        .unwrap()
    };
    let net = exchange(
        &sock,
        &post(
            "NetworkDriver.CreateNetwork",
            r#"{"NetworkID":"net81","Options":{"com.docker.network.generic":{"parent":"eth0"}},"IPv4Data":[{"Pool":"10.81.0.0/24","Gateway":"10.81.0.1/24"}],"IPv6Data":[]}"#,
        ),
    );
    assert!(net.starts_with("HTTP/1.1 200"), "{net}\n{}", s.log());
    let first = exchange(&sock, body("10.81.0.5/24").as_bytes());
    assert!(first.starts_with("HTTP/1.1 200") && first.contains("MacAddress"), "{first}");
    let again = exchange(&sock, body("10.81.0.5/24").as_bytes());
    assert!(again.starts_with("HTTP/1.1 200"), "the same request repeated: {again}");
    let mac = |a: &str| a.split("\"MacAddress\":\"").nth(1).map(|r| r[..17].to_string());
    assert_eq!(mac(&first), mac(&again));
    let other = exchange(&sock, body("10.81.0.6/24").as_bytes());
    assert!(other.starts_with("HTTP/1.1 500"), "another address under the same id: {other}");
    assert!(other.contains("10.81.0.5") && other.contains("10.81.0.6"), "{other}");
    let ps: serde_json::Value = dataplane_tests::json_lines(&h.ok(&["ps", "-a", "--format", "json"]));
    assert_eq!(ps.as_array().unwrap().len(), 1, "{ps:#}");
    let del = exchange(&sock, &post("NetworkDriver.DeleteEndpoint", r#"{"NetworkID":"net81","EndpointID":"ep1"}"#));
    assert!(del.starts_with("HTTP/1.1 200"), "{del}");
    let del = exchange(&sock, &post("NetworkDriver.DeleteNetwork", r#"{"NetworkID":"net81"}"#));
    assert!(del.starts_with("HTTP/1.1 200"), "{del}");
    drop(s);
}

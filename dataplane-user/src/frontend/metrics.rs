//! Prometheus/OpenMetrics text for operators: `dataplane metrics --listen ADDR`, and the
//! same endpoint from the Docker plugin's process (`plugin docker --metrics ADDR`).
//!
//! Nothing polls: every scrape reads the pinned maps (per-CPU counters summed) and the
//! store, and renders a fresh registry.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;

use super::http::{serve_connection, Answer, Backoff, Call, Limits};

use crate::{
    control::{endpoint_number, ControlError, Engine},
    store::Owner,
};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Who owns an endpoint and its container id, for labels.
fn owner_labels(o: &Owner) -> (&'static str, String) {
    match o {
        Owner::Cli => ("cli", String::new()),
        Owner::Docker { id, .. } => ("docker", id.clone()),
        Owner::Cni { container_id, .. } => ("cni", container_id.clone()),
    }
}

/// One scrape's text.
pub fn render(engine: &mut Engine) -> Result<String, ControlError> {
    let mut reg = Registry::with_prefix("dataplane");
    let counter_family = |reg: &mut Registry, name: &str, help: &str| {
        let f = Family::<Labels, Counter>::default();
        reg.register(name, help, f.clone());
        f
    };
    let gauge_family = |reg: &mut Registry, name: &str, help: &str| {
        let f = Family::<Labels, Gauge>::default();
        reg.register(name, help, f.clone());
        f
    };

    let pkts = counter_family(&mut reg, "parent_packets", "Frames the parent programs decided on, by reason");
    let bytes = counter_family(&mut reg, "parent_bytes", "Bytes the parent programs decided on, by reason");
    for c in engine.parent_counters()? {
        let verdict = if c.reason.is_drop() { "drop" } else { "pass" };
        let l = labels(&[("iface", &c.iface), ("reason", c.reason.name()), ("verdict", verdict)]);
        pkts.get_or_create(&l).inc_by(c.packets);
        bytes.get_or_create(&l).inc_by(c.bytes);
    }

    let per_ep = engine.endpoint_counters()?;
    let eps = engine.endpoints()?;
    type Field = fn(&dataplane_common::EndpointCounters) -> u64;
    let ep_counters: Vec<(Family<Labels, Counter>, Field)> = vec![
        (counter_family(&mut reg, "endpoint_rx_packets", "Frames delivered to the endpoint"), |c| c.rx_packets),
        (counter_family(&mut reg, "endpoint_rx_bytes", "Bytes delivered to the endpoint"), |c| c.rx_bytes),
        (counter_family(&mut reg, "endpoint_tx_packets", "Frames the endpoint sent as itself"), |c| c.tx_packets),
        (counter_family(&mut reg, "endpoint_tx_bytes", "Bytes the endpoint sent as itself"), |c| c.tx_bytes),
        (
            counter_family(&mut reg, "endpoint_spoofed_packets", "Frames from the endpoint dropped by anti-spoofing"),
            |c| c.spoofed_packets,
        ),
        (counter_family(&mut reg, "endpoint_spoofed_bytes", "Bytes from the endpoint dropped by anti-spoofing"), |c| {
            c.spoofed_bytes
        }),
    ];
    let conflicts = engine.conflicts();
    let conflict_frames = counter_family(
        &mut reg,
        "endpoint_conflict_frames",
        "Frames from another host on the wire using the endpoint's MAC (kind mac) or claiming its address (kind ip)",
    );
    let endpoints = gauge_family(&mut reg, "endpoints", "Endpoints, by owner");
    for (e, atts) in &eps {
        if let Some(k) = conflicts.get(&endpoint_number(&e.id)) {
            let (owner, _) = owner_labels(&e.owner);
            let network = atts.first().map_or(e.network_mode.to_string(), |a| a.network.clone());
            for (kind, n) in [("mac", k.mac_frames), ("ip", k.ip_frames)] {
                conflict_frames
                    .get_or_create(&labels(&[
                        ("endpoint", &e.name),
                        ("network", &network),
                        ("owner", owner),
                        ("kind", kind),
                    ]))
                    .inc_by(n);
            }
        }
        let (owner, container) = owner_labels(&e.owner);
        endpoints.get_or_create(&labels(&[("owner", owner)])).inc();
        let Some(c) = per_ep.get(&endpoint_number(&e.id)) else { continue };
        let network = atts.first().map_or(e.network_mode.to_string(), |a| a.network.clone());
        let l = labels(&[("endpoint", &e.name), ("network", &network), ("owner", owner), ("container", &container)]);
        for (family, get) in &ep_counters {
            family.get_or_create(&l).inc_by(get(c));
        }
    }

    let networks = gauge_family(&mut reg, "networks", "Networks (besides host and none), by driver and owner");
    // This host's networks (a cluster that cannot be reached does not stop the metrics).
    for n in engine.networks_here()?.iter().filter(|n| !crate::control::PREDEFINED.contains(&n.name.as_str())) {
        let (owner, _) = owner_labels(&n.owner);
        networks.get_or_create(&labels(&[("driver", n.driver.name()), ("owner", owner)])).inc();
    }

    let attached = gauge_family(&mut reg, "program_attached", "Programs attached, by interface and mechanism");
    for a in engine.program_attachments() {
        attached
            .get_or_create(&labels(&[("netns", &a.netns), ("iface", &a.iface), ("mechanism", &a.mechanism)]))
            .set(1);
    }
    if let Some(c) = engine.cluster() {
        use std::sync::atomic::Ordering::Relaxed;
        // One round trip per scrape: whether the cluster answers now.
        let up = Gauge::<i64>::default();
        up.set(i64::from(c.hosts().is_ok()));
        reg.register("cluster_up", "Whether the etcd cluster answered this scrape (1) or not (0)", up);
        let trips = Counter::<u64>::default();
        trips.inc_by(crate::cluster::ROUND_TRIPS.load(Relaxed));
        reg.register("cluster_round_trips", "Operations this process sent to the etcd cluster", trips);
        let failed = Counter::<u64>::default();
        failed.inc_by(crate::cluster::FAILURES.load(Relaxed));
        reg.register("cluster_failures", "Cluster operations that failed (unreachable, refused, no quorum)", failed);
    }
    let build = gauge_family(&mut reg, "build_info", "The dataplane build serving this endpoint");
    build.get_or_create(&labels(&[("version", env!("CARGO_PKG_VERSION"))])).set(1);

    let mut out = String::new();
    encode(&mut out, &reg).map_err(|e| ControlError::Internal(format!("encoding metrics: {e}")))?;
    Ok(out)
}

fn refuse(status: hyper::StatusCode, msg: String) -> Answer {
    Answer { status, content_type: TEXT, body: format!("{msg}\n") }
}

const TEXT: &str = "text/plain; charset=utf-8";

/// GET /metrics, rendered on tokio's blocking pool; anything else is 404 (405 for
/// another method on /metrics).
async fn answer(call: Call, engine: Arc<Mutex<Engine>>) -> Answer {
    if call.path != "/metrics" {
        return Answer { status: hyper::StatusCode::NOT_FOUND, content_type: TEXT, body: "try /metrics\n".into() };
    }
    if call.method != hyper::Method::GET && call.method != hyper::Method::HEAD {
        return Answer { status: hyper::StatusCode::METHOD_NOT_ALLOWED, content_type: TEXT, body: "use GET\n".into() };
    }
    let r = tokio::task::spawn_blocking(move || render(&mut engine.lock().unwrap_or_else(|p| p.into_inner())))
        .await
        .unwrap_or_else(|e| Err(ControlError::Internal(e.to_string())));
    match r {
        Ok(text) => Answer {
            status: hyper::StatusCode::OK,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: text,
        },
        Err(e) => {
            Answer { status: hyper::StatusCode::INTERNAL_SERVER_ERROR, content_type: TEXT, body: format!("{e}\n") }
        }
    }
}

/// Serve GET /metrics on `listener` until the runtime stops.
pub async fn serve_on(listener: TcpListener, engine: Arc<Mutex<Engine>>) {
    let mut backoff = Backoff::new("dataplane metrics");
    let limits = Limits::from_env();
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                backoff.reset();
                let e = engine.clone();
                tokio::spawn(serve_connection(conn, limits, refuse, move |call| answer(call, e.clone())));
            }
            // Out of descriptors: wait for connections to close instead of spinning.
            Err(err) => backoff.wait(&err).await,
        }
    }
}

/// `dataplane metrics --listen ADDR`: serve until SIGTERM/SIGINT.
pub fn serve(addr: &str, engine: Engine) -> Result<(), ControlError> {
    let io = |what: String, source: std::io::Error| ControlError::Io { what, source };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| io("starting the runtime".into(), e))?;
    rt.block_on(async {
        let listener = TcpListener::bind(addr).await.map_err(|e| io(format!("listening on {addr}"), e))?;
        eprintln!(
            "dataplane metrics: serving http://{}/metrics",
            listener.local_addr().map_err(|e| io(addr.into(), e))?
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| io("signals".into(), e))?;
        tokio::select! {
            _ = serve_on(listener, Arc::new(Mutex::new(engine))) => {}
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}

//! CPU per GiB of one libp2p stream on loopback: TCP+noise+yamux, TCP+TLS+yamux, or QUIC.
//!
//! Two swarms in one process (two tokio workers) connect over 127.0.0.1; one opens a
//! `libp2p-stream` stream and writes N GiB in 256 KiB slices, the other reads them. Printed: wall
//! time, and the process's CPU (user + system, both ends) per GiB per end. No hashing, no disk:
//! what the transport alone costs, to set against a node's profile (`bench/p2p.py --phases`).
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{Multiaddr, StreamProtocol, Swarm, noise, tcp, tls, yamux};
use std::time::{Duration, Instant};

fn cpu() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn build(mode: &str) -> Swarm<libp2p_stream::Behaviour> {
    let b = libp2p::SwarmBuilder::with_new_identity().with_tokio();
    let cfg = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(600));
    match mode {
        "noise" => b
            .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
            .unwrap()
            .with_behaviour(|_| libp2p_stream::Behaviour::new())
            .unwrap()
            .with_swarm_config(cfg)
            .build(),
        "tls" => b
            .with_tcp(tcp::Config::default().nodelay(true), tls::Config::new, yamux::Config::default)
            .unwrap()
            .with_behaviour(|_| libp2p_stream::Behaviour::new())
            .unwrap()
            .with_swarm_config(cfg)
            .build(),
        "quic" => {
            b.with_quic().with_behaviour(|_| libp2p_stream::Behaviour::new()).unwrap().with_swarm_config(cfg).build()
        }
        _ => panic!("mode"),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mode = std::env::args().nth(1).unwrap();
    let gib: u64 = std::env::args().nth(2).map_or(1, |s| s.parse().unwrap());
    let proto = StreamProtocol::new("/bench/1");
    let mut a = build(&mode);
    let mut b = build(&mode);
    let listen: Multiaddr =
        if mode == "quic" { "/ip4/127.0.0.1/udp/0/quic-v1" } else { "/ip4/127.0.0.1/tcp/0" }.parse().unwrap();
    a.listen_on(listen).unwrap();
    let addr = loop {
        if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } = a.select_next_some().await {
            break address;
        }
    };
    let a_id = *a.local_peer_id();
    let mut incoming = a.behaviour().new_control().accept(proto.clone()).unwrap();
    let mut ctl = b.behaviour().new_control();
    b.dial(addr).unwrap();
    tokio::spawn(async move {
        loop {
            a.select_next_some().await;
        }
    });
    tokio::spawn(async move {
        loop {
            b.select_next_some().await;
        }
    });
    let total = gib << 30;
    let recv = tokio::spawn(async move {
        let (_, mut s) = incoming.next().await.unwrap();
        let mut buf = vec![0u8; 256 << 10];
        let mut got = 0u64;
        while got < total {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got += n as u64;
        }
    });
    let mut s = loop {
        match ctl.open_stream(a_id, proto.clone()).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let (c0, t0) = (cpu(), Instant::now());
    let buf = vec![7u8; 256 << 10];
    let mut sent = 0u64;
    while sent < total {
        s.write_all(&buf).await.unwrap();
        sent += buf.len() as u64;
    }
    s.flush().await.unwrap();
    recv.await.unwrap();
    let (c, t) = (cpu() - c0, t0.elapsed().as_secs_f64());
    println!(
        "{mode}: {gib} GiB in {t:.2} s ({:.0} MiB/s), CPU both ends {c:.2} s = {:.2} CPU-s/GiB per end",
        (total as f64 / t) / 1048576.0,
        c / gib as f64 / 2.0
    );
}

//! The DNS server of the agent: binds UDP and TCP on the same port, keeps the directory of
//! nodes up to date from the gossip membership, and serves `opsbro_dns` answers.

use std::net::SocketAddr;
use std::sync::Arc;

use opsbro_config::DnsSettings;
use opsbro_dns::Node;
use opsbro_dns::server::{Counters, DnsHandler};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::membership::Peer;

fn directory(peers: &[Peer]) -> Vec<Node> {
    use opsbro_gossip::MemberState;
    peers
        .iter()
        .map(|p| Node {
            name: p.name.clone(),
            zone: p.zone.clone(),
            addr: p.addr.ip(),
            groups: p.groups.clone(),
            alive: matches!(p.state, MemberState::Alive | MemberState::Suspect),
            critical: p.critical,
            maintenance: p.maintenance.is_some(),
            services: p
                .services
                .iter()
                .map(|s| opsbro_dns::Service {
                    name: s.name.clone(),
                    port: s.port,
                    tags: s.tags.clone(),
                    addr: s.address.unwrap_or_else(|| p.addr.ip()),
                    health: match opsbro_checks::CheckState::from_wire(s.state) {
                        opsbro_checks::CheckState::Ok => opsbro_dns::Health::Passing,
                        opsbro_checks::CheckState::Warning => opsbro_dns::Health::Warning,
                        _ => opsbro_dns::Health::Critical,
                    },
                    maintenance: s.maintenance.is_some(),
                })
                .collect(),
        })
        .collect()
}

/// Start the DNS server; answers the bound address.
pub async fn start(
    settings: &DnsSettings,
    mut membership: watch::Receiver<Arc<Vec<Peer>>>,
    counters: Arc<Counters>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<SocketAddr, String> {
    let mut answer_settings = opsbro_dns::Settings::new(
        &settings.domain,
        settings.ttl,
        settings.negative_ttl,
        settings.only_passing,
    )?;
    answer_settings.warning_passes = settings.warning_passes;
    let addr = SocketAddr::new(settings.bind, settings.port);
    let (udp, tcp) = crate::host::bind_udp_tcp(addr)
        .await
        .map_err(|e| format!("cannot listen for DNS on {addr}: {e}"))?;
    let bound = udp.local_addr().map_err(|e| e.to_string())?;
    let (tx, rx) = watch::channel(Arc::new(directory(&membership.borrow_and_update())));
    let stop = shutdown.clone();
    tracker.spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = membership.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let nodes = directory(&membership.borrow_and_update());
                    tx.send_replace(Arc::new(nodes));
                }
            }
        }
    });
    let handler = DnsHandler::new(answer_settings, rx, settings.recursors.clone(), counters);
    let options = opsbro_dns::server::UdpOptions {
        max_tcp_connections: crate::host::connection_cap(opsbro_dns::server::MAX_TCP_CONNECTIONS),
        helpers: settings.udp_threads.saturating_sub(1),
        coalesce: settings.coalesce,
    };
    tracker.spawn(opsbro_dns::server::serve(
        handler, udp, tcp, options, shutdown,
    ));
    Ok(bound)
}

//! Where the host runs: the hosting driver (`ec2`, `google-cloud`, `azure`, `digitalocean`,
//! `scaleway`, `alibaba`, `openstack`; else what the local files show: `docker-container`,
//! `synology`, `on-premise`), found once at agent start by asking the clouds' instance metadata
//! services, and the cloud collectors (`collector.ec2.*`, `collector.googlecloud.*`, ...) that
//! report what that service says about the instance.
//!
//! The parts: [`hints`] reads the local files (DMI strings, `/.dockerenv`, the CPU's hypervisor
//! flag) and says whether a probe is worth it (a physical machine is not asked); [`parse`] turns
//! each provider's documented answers into an [`Instance`] and picks the answer that counts, both
//! without IO; [`http`] asks the services (short timeouts, one round, no retries); [`detect`]
//! puts them together under one deadline ([`ROUND_LIMIT`]), and [`Hosting`] shares the result
//! with the agent (expressions, `agent info`, the advertise address) and with the collectors,
//! which read the service again at most every [`REFRESH`].

pub mod collector;
pub mod hints;
pub mod http;
pub mod parse;

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::AppCollector;

/// The most one detection round takes, from reading the local files to the last answer: the
/// agent waits for it before it chooses the address it announces, so a host without any
/// metadata service starts at most this much later.
pub const ROUND_LIMIT: Duration = Duration::from_millis(1800);

/// The longest a connection to a metadata service may take to open: they are on the local link
/// (or the hypervisor), so one that takes longer is not there.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// The default limit of one request to a metadata service (`hosting.metadata_timeout`).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the cloud collectors ask the metadata service again (it barely changes).
pub const REFRESH: Duration = Duration::from_secs(300);

/// A cloud whose instance metadata service opsbro reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Driver {
    /// Amazon EC2 (IMDSv2).
    Ec2,
    /// Google Compute Engine.
    GoogleCloud,
    /// Microsoft Azure (IMDS).
    Azure,
    /// DigitalOcean droplets.
    DigitalOcean,
    /// Scaleway instances.
    Scaleway,
    /// Alibaba Cloud ECS (security-hardened mode).
    Alibaba,
    /// OpenStack Nova (any OpenStack cloud).
    OpenStack,
}

impl Driver {
    /// Every cloud, in the order their answers count when several answer (the ones whose answer
    /// is specific to them first; OpenStack's API is served by several clouds, so it is last).
    pub const ALL: [Driver; 7] = [
        Driver::GoogleCloud,
        Driver::Azure,
        Driver::DigitalOcean,
        Driver::Scaleway,
        Driver::Alibaba,
        Driver::Ec2,
        Driver::OpenStack,
    ];

    /// Its hosting driver name (`hosting_driver_is_active('ec2')`, `hosting.driver`, packs).
    pub fn name(self) -> &'static str {
        match self {
            Driver::Ec2 => "ec2",
            Driver::GoogleCloud => "google-cloud",
            Driver::Azure => "azure",
            Driver::DigitalOcean => "digitalocean",
            Driver::Scaleway => "scaleway",
            Driver::Alibaba => "alibaba",
            Driver::OpenStack => "openstack",
        }
    }

    /// Its collector's name (`collector.<name>.*`), as the original's collectors were named.
    pub fn collector(self) -> &'static str {
        match self {
            Driver::GoogleCloud => "googlecloud",
            other => other.name(),
        }
    }

    /// The driver of a hosting driver name.
    pub fn from_name(name: &str) -> Option<Driver> {
        Driver::ALL.into_iter().find(|d| d.name() == name)
    }
}

/// Names of the cloud collectors, in [`Driver::ALL`] order.
pub const COLLECTOR_NAMES: [&str; 7] = [
    "googlecloud",
    "azure",
    "digitalocean",
    "scaleway",
    "alibaba",
    "ec2",
    "openstack",
];

/// What a metadata service said about this instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Which cloud answered.
    pub driver: Driver,
    /// The instance's id in its cloud (`i-0abc...`, a GCE id, an Azure vmId...).
    pub instance_id: String,
    /// Region (`eu-west-1`, `westeurope`...), when the cloud has them.
    pub region: Option<String>,
    /// Availability zone.
    pub zone: Option<String>,
    /// Machine type / size.
    pub instance_type: Option<String>,
    /// The private address of its first interface.
    pub local_ipv4: Option<IpAddr>,
    /// The public address the cloud maps to it, if any.
    pub public_ipv4: Option<IpAddr>,
    /// What the collector reports (`collector.<name>.*`): short, typed, no secrets.
    pub data: Map<String, Value>,
}

/// How to find the hosting driver (`hosting:` in agent.yml).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Which services to ask.
    pub mode: Mode,
    /// In [`Mode::Auto`], ask even when the DMI data names a physical machine.
    pub always_probe: bool,
    /// Limit of one request (at most [`ROUND_LIMIT`]).
    pub request_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Auto,
            always_probe: false,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// `hosting.driver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Local hints first, then every metadata service at once (default).
    Auto,
    /// Never ask a metadata service: the driver is what the local files show (not a cloud).
    Off,
    /// This cloud is the driver; only its service is asked (for its collector's values).
    Forced(Driver),
}

/// The outcome of a detection round.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// The active hosting driver's name.
    pub driver: String,
    /// The cloud driver, when one is active (answered, or forced).
    pub cloud: Option<Driver>,
    /// What its metadata service said (None when it was forced and did not answer).
    pub instance: Option<Instance>,
    /// The services asked, in [`Driver::ALL`] order.
    pub probed: Vec<Driver>,
    /// Why the services that were asked did not count.
    pub failures: Vec<(Driver, String)>,
    /// How long the round took, local files included.
    pub elapsed: Duration,
    /// How the driver was chosen, in a sentence for people.
    pub detail: String,
}

/// Find the hosting driver of the host whose files are at `root` (`/`): one round, at most
/// [`ROUND_LIMIT`] long.
pub async fn detect(settings: &Settings, root: &Path) -> Detection {
    let started = Instant::now();
    let facts = hints::LocalFacts::read(root);
    let fallback = facts.local_driver();
    let plan = hints::plan(settings, &facts);
    let endpoints = http::Endpoints::default();
    let results = if plan.drivers.is_empty() {
        Vec::new()
    } else {
        http::probe(&plan.drivers, &endpoints, settings.request_timeout).await
    };
    let elapsed = started.elapsed();
    let mut detection = parse::decide(settings, &plan, results, &fallback);
    detection.elapsed = elapsed;
    detection
}

/// The detection the agent made at start, shared with the collectors, which keep its
/// instance's values fresh.
#[derive(Debug, Clone, Default)]
pub struct Hosting {
    inner: Arc<RwLock<Option<Shared>>>,
}

#[derive(Debug)]
struct Shared {
    detection: Detection,
    settings: Settings,
    /// Where the services are (the real addresses; tests point elsewhere).
    endpoints: http::Endpoints,
    /// When the service was last asked (the start, then the collector's refreshes).
    asked: Instant,
    /// Why the last refresh failed.
    refresh_error: Option<String>,
}

impl Hosting {
    /// Share `detection`, made with `settings`.
    pub fn new(detection: Detection, settings: Settings) -> Hosting {
        Hosting {
            inner: Arc::new(RwLock::new(Some(Shared {
                detection,
                settings,
                endpoints: http::Endpoints::default(),
                asked: Instant::now(),
                refresh_error: None,
            }))),
        }
    }

    /// The detection (None before one was made).
    pub fn detection(&self) -> Option<Detection> {
        self.read(|s| s.detection.clone())
    }

    /// The active hosting driver's name (None before a detection was made).
    pub fn driver(&self) -> Option<String> {
        self.read(|s| s.detection.driver.clone())
    }

    fn read<T>(&self, f: impl FnOnce(&Shared) -> T) -> Option<T> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(f)
    }

    fn write(&self, f: impl FnOnce(&mut Shared)) {
        if let Some(s) = self
            .inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            f(s);
        }
    }
}

/// One collector per cloud, reading `hosting`; each reports nothing (not eligible) unless its
/// cloud is the active driver.
pub fn collectors(hosting: &Hosting) -> Vec<Box<dyn AppCollector>> {
    Driver::ALL
        .into_iter()
        .map(|driver| {
            Box::new(collector::CloudCollector::new(driver, hosting.clone()))
                as Box<dyn AppCollector>
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_collectors_follow_the_original() {
        for d in Driver::ALL {
            assert_eq!(Driver::from_name(d.name()), Some(d));
        }
        assert_eq!(Driver::GoogleCloud.collector(), "googlecloud");
        assert_eq!(
            COLLECTOR_NAMES.to_vec(),
            Driver::ALL.map(Driver::collector).to_vec()
        );
        assert_eq!(Driver::from_name("on-premise"), None);
    }
}

//! The hosting driver, found once at start ([`detect`], bounded by
//! [`opsbro_apps::clouds::ROUND_LIMIT`]) before the agent chooses the address it announces
//! ([`advertise`]): with `hosting.advertise_public_address`, a cloud's public address is the one
//! peers reach. Expressions (`hosting_driver_is_active`), the cloud collectors and `agent info`
//! read the same [`Hosting`].

use std::net::IpAddr;
use std::path::Path;

use opsbro_apps::clouds::{self, Driver, Hosting, Mode};
use opsbro_config::{AgentConfig, HostingSettings};

/// Overrides `hosting.driver` (`none` in test suites, whose agents must not send traffic off
/// the machine).
pub const DRIVER_ENV: &str = "OPSBRO_HOSTING_DRIVER";

/// The detection settings of `hosting:` (`$OPSBRO_HOSTING_DRIVER` overrides the driver).
pub fn settings(c: &HostingSettings) -> clouds::Settings {
    let forced = std::env::var(DRIVER_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty());
    let driver = forced.as_deref().unwrap_or(c.driver.as_str()).trim();
    let mode = match driver {
        "none" => Mode::Off,
        name => Driver::from_name(name).map_or(Mode::Auto, Mode::Forced),
    };
    clouds::Settings {
        mode,
        always_probe: c.always_probe,
        request_timeout: c.metadata_timeout,
    }
}

/// Find the hosting driver (one round, at most `ROUND_LIMIT`) and say what was found.
pub async fn detect(c: &HostingSettings) -> Hosting {
    let settings = settings(c);
    let detection = clouds::detect(&settings, Path::new("/")).await;
    let probe_ms = detection.elapsed.as_millis();
    for (driver, why) in &detection.failures {
        tracing::debug!(driver = driver.name(), "metadata service: {why}");
    }
    match &detection.instance {
        Some(i) => tracing::info!(
            driver = %detection.driver,
            instance = %i.instance_id,
            region = i.region.as_deref().unwrap_or("-"),
            zone = i.zone.as_deref().unwrap_or("-"),
            public = %i.public_ipv4.map(|ip| ip.to_string()).unwrap_or_else(|| "-".into()),
            probe_ms,
            "hosting driver {}: {}",
            detection.driver,
            detection.detail
        ),
        None if detection.cloud.is_some() => tracing::warn!(
            driver = %detection.driver,
            probe_ms,
            "hosting driver {}: {}",
            detection.driver,
            detection.detail
        ),
        None => tracing::info!(
            driver = %detection.driver,
            probe_ms,
            "hosting driver {}: {}",
            detection.driver,
            detection.detail
        ),
    }
    Hosting::new(detection, settings)
}

/// The address announced to peers: `advertise_addr`; else, with
/// `hosting.advertise_public_address` and a cloud that gave a public address, that address
/// (gossip must listen beyond loopback); else as [`crate::host::choose_advertise`] says.
pub fn advertise(
    config: &AgentConfig,
    bind: IpAddr,
    interfaces: &[IpAddr],
    hosting: &Hosting,
) -> IpAddr {
    if config.advertise_addr.is_none() && config.hosting.advertise_public_address {
        let public = hosting
            .detection()
            .and_then(|d| d.instance)
            .and_then(|i| i.public_ipv4);
        match public {
            Some(ip) if !bind.is_loopback() => {
                tracing::info!(%ip, "announcing the cloud's public address (hosting.advertise_public_address)");
                return ip;
            }
            Some(_) => tracing::warn!(
                "hosting.advertise_public_address: gossip listens on loopback only (no encryption key), so the public address is not announced"
            ),
            None => tracing::warn!(
                "hosting.advertise_public_address: no cloud gave a public address; announcing an interface address"
            ),
        }
    }
    crate::host::choose_advertise(config.advertise_addr, bind, interfaces)
}

/// `agent info`'s hosting section.
pub fn info(hosting: &Hosting) -> opsbro_api::HostingInfo {
    let Some(d) = hosting.detection() else {
        return opsbro_api::HostingInfo::default();
    };
    let i = d.instance.as_ref();
    opsbro_api::HostingInfo {
        driver: d.driver.clone(),
        cloud: d.cloud.map(|c| c.name().to_owned()),
        detail: d.detail.clone(),
        probe_ms: u64::try_from(d.elapsed.as_millis()).unwrap_or(u64::MAX),
        probed: d.probed.iter().map(|p| p.name().to_owned()).collect(),
        instance_id: i.map(|i| i.instance_id.clone()),
        region: i.and_then(|i| i.region.clone()),
        zone: i.and_then(|i| i.zone.clone()),
        instance_type: i.and_then(|i| i.instance_type.clone()),
        local_addr: i.and_then(|i| i.local_ipv4),
        public_addr: i.and_then(|i| i.public_ipv4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_driver_sets_the_mode() {
        let mut c = HostingSettings::default();
        assert_eq!(settings(&c).mode, Mode::Auto);
        c.driver = "none".into();
        assert_eq!(settings(&c).mode, Mode::Off);
        c.driver = "google-cloud".into();
        assert_eq!(settings(&c).mode, Mode::Forced(Driver::GoogleCloud));
    }
}

//! Each provider's documented answers turned into an [`Instance`], and the choice of the answer
//! that counts. No IO: [`super::http`] hands the bodies over.
//!
//! What a collector reports is chosen here, field by field: ids, placement, type and addresses.
//! Never user data, SSH keys, service accounts or custom attributes (they may hold secrets and
//! every value of a collector is visible to the cluster's expressions and to `collectors show`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Map, Value};

use super::hints::Plan;
use super::{Detection, Driver, Instance, Mode, Settings};

/// The most tags kept from a metadata service.
pub const MAX_TAGS: usize = 50;

fn json(body: &str, what: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("{what} is not JSON: {e}"))?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(format!("{what} is not a JSON object"))
    }
}

/// The text at `pointer` (a JSON pointer), numbers written out; None when absent or empty.
fn text(v: &Value, pointer: &str) -> Option<String> {
    match v.pointer(pointer)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn ip(s: Option<&str>) -> Option<IpAddr> {
    s.and_then(|s| s.trim().parse().ok())
}

/// The last part of a `projects/123/zones/europe-west1-b` path.
fn last_segment(s: &str) -> String {
    s.rsplit('/').next().unwrap_or(s).to_owned()
}

/// Builds a collector object from optional values.
#[derive(Default)]
struct Data(Map<String, Value>);

impl Data {
    fn put(&mut self, key: &str, value: Option<impl Into<Value>>) -> &mut Self {
        if let Some(v) = value {
            self.0.insert(key.to_owned(), v.into());
        }
        self
    }
}

/// The answers of an EC2 instance metadata service (IMDSv2): the identity document and the
/// `meta-data/` items (404 → None), and the instance tags when they are allowed in metadata.
#[derive(Debug, Clone, Default)]
pub struct Ec2Answers {
    /// `/latest/dynamic/instance-identity/document`.
    pub document: String,
    /// `meta-data/local-ipv4`.
    pub local_ipv4: Option<String>,
    /// `meta-data/public-ipv4` (absent without a public address).
    pub public_ipv4: Option<String>,
    /// `meta-data/local-hostname`.
    pub local_hostname: Option<String>,
    /// `meta-data/public-hostname`.
    pub public_hostname: Option<String>,
    /// `meta-data/security-groups` (one per line).
    pub security_groups: Option<String>,
    /// `meta-data/tags/instance/<key>`: (key, value).
    pub tags: Vec<(String, String)>,
}

/// An EC2 instance from its identity document (`instanceId` and `region` required) and items.
pub fn ec2(a: &Ec2Answers) -> Result<Instance, String> {
    let doc = json(&a.document, "the instance identity document")?;
    let instance_id =
        text(&doc, "/instanceId").ok_or("the instance identity document has no instanceId")?;
    let region = text(&doc, "/region").ok_or("the instance identity document has no region")?;
    let zone = text(&doc, "/availabilityZone");
    let instance_type = text(&doc, "/instanceType");
    let local = a.local_ipv4.clone().or_else(|| text(&doc, "/privateIp"));
    let mut d = Data::default();
    d.put("instance_id", Some(instance_id.clone()))
        .put("region", Some(region.clone()))
        .put("availability_zone", zone.clone())
        .put("instance_type", instance_type.clone())
        .put("ami_id", text(&doc, "/imageId"))
        .put("account_id", text(&doc, "/accountId"))
        .put("architecture", text(&doc, "/architecture"))
        .put("pending_time", text(&doc, "/pendingTime"))
        .put("local_ipv4", local.clone())
        .put("public_ipv4", a.public_ipv4.clone())
        .put("local_hostname", a.local_hostname.clone())
        .put("public_hostname", a.public_hostname.clone())
        .put(
            "security_groups",
            a.security_groups.as_ref().map(|s| {
                s.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|l| Value::from(l.to_owned()))
                    .collect::<Vec<_>>()
            }),
        );
    if !a.tags.is_empty() {
        let tags: Map<String, Value> = a
            .tags
            .iter()
            .take(MAX_TAGS)
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect();
        d.put("tags", Some(Value::Object(tags)));
    }
    Ok(Instance {
        driver: Driver::Ec2,
        instance_id,
        region: Some(region),
        zone,
        instance_type,
        local_ipv4: ip(local.as_deref()),
        public_ipv4: ip(a.public_ipv4.as_deref()),
        data: d.0,
    })
}

/// A Google Compute Engine instance from `computeMetadata/v1/instance/?recursive=true` and the
/// project's `project-id` and `numeric-project-id`.
pub fn google_cloud(
    instance: &str,
    project_id: Option<&str>,
    numeric_project_id: Option<&str>,
) -> Result<Instance, String> {
    let v = json(instance, "the instance metadata")?;
    let id = text(&v, "/id").ok_or("the instance metadata has no id")?;
    let zone = text(&v, "/zone").map(|z| last_segment(&z));
    // A zone is its region and a letter: europe-west1-b is in europe-west1.
    let region = zone
        .as_deref()
        .and_then(|z| z.rsplit_once('-'))
        .map(|(r, _)| r.to_owned());
    let machine_type = text(&v, "/machineType").map(|m| last_segment(&m));
    let local = text(&v, "/networkInterfaces/0/ip");
    let public = text(&v, "/networkInterfaces/0/accessConfigs/0/externalIp");
    let tags: Option<Vec<Value>> = v.get("tags").and_then(Value::as_array).map(|t| {
        t.iter()
            .filter_map(Value::as_str)
            .take(MAX_TAGS)
            .map(|s| Value::from(s.to_owned()))
            .collect()
    });
    let mut d = Data::default();
    d.put("id", Some(id.clone()))
        .put("name", text(&v, "/name"))
        .put("hostname", text(&v, "/hostname"))
        .put("zone", zone.clone())
        .put("region", region.clone())
        .put("machine_type", machine_type.clone())
        .put("image", text(&v, "/image").map(|i| last_segment(&i)))
        .put("cpu_platform", text(&v, "/cpuPlatform"))
        .put("preemptible", text(&v, "/scheduling/preemptible"))
        .put("project_id", project_id.map(str::to_owned))
        .put("numeric_project_id", numeric_project_id.map(str::to_owned))
        .put("local_ipv4", local.clone())
        .put("public_ipv4", public.clone())
        .put("tags", tags);
    Ok(Instance {
        driver: Driver::GoogleCloud,
        instance_id: id,
        region,
        zone,
        instance_type: machine_type,
        local_ipv4: ip(local.as_deref()),
        public_ipv4: ip(public.as_deref()),
        data: d.0,
    })
}

/// An Azure VM from `metadata/instance` (`compute` and the first interface's addresses).
pub fn azure(body: &str) -> Result<Instance, String> {
    let v = json(body, "the instance metadata")?;
    let vm_id = text(&v, "/compute/vmId").ok_or("the instance metadata has no compute.vmId")?;
    let location = text(&v, "/compute/location");
    let zone = text(&v, "/compute/zone");
    let size = text(&v, "/compute/vmSize");
    let local = text(&v, "/network/interface/0/ipv4/ipAddress/0/privateIpAddress");
    let public = text(&v, "/network/interface/0/ipv4/ipAddress/0/publicIpAddress");
    let tags: Option<Map<String, Value>> = v
        .pointer("/compute/tagsList")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|t| Some((text(t, "/name")?, text(t, "/value").unwrap_or_default())))
                .take(MAX_TAGS)
                .map(|(k, v)| (k, Value::from(v)))
                .collect()
        });
    let mut d = Data::default();
    d.put("vm_id", Some(vm_id.clone()))
        .put("name", text(&v, "/compute/name"))
        .put("location", location.clone())
        .put("zone", zone.clone())
        .put("vm_size", size.clone())
        .put("os_type", text(&v, "/compute/osType"))
        .put("publisher", text(&v, "/compute/publisher"))
        .put("offer", text(&v, "/compute/offer"))
        .put("sku", text(&v, "/compute/sku"))
        .put("version", text(&v, "/compute/version"))
        .put("resource_group", text(&v, "/compute/resourceGroupName"))
        .put("subscription_id", text(&v, "/compute/subscriptionId"))
        .put("scale_set", text(&v, "/compute/vmScaleSetName"))
        .put("environment", text(&v, "/compute/azEnvironment"))
        .put("local_ipv4", local.clone())
        .put("public_ipv4", public.clone())
        .put("tags", tags.map(Value::Object));
    Ok(Instance {
        driver: Driver::Azure,
        instance_id: vm_id,
        region: location,
        zone,
        instance_type: size,
        local_ipv4: ip(local.as_deref()),
        public_ipv4: ip(public.as_deref()),
        data: d.0,
    })
}

/// A DigitalOcean droplet from `metadata/v1.json`.
pub fn digitalocean(body: &str) -> Result<Instance, String> {
    let v = json(body, "the droplet metadata")?;
    let id = text(&v, "/droplet_id").ok_or("the droplet metadata has no droplet_id")?;
    let region = text(&v, "/region");
    let public = text(&v, "/interfaces/public/0/ipv4/ip_address");
    let local = text(&v, "/interfaces/private/0/ipv4/ip_address").or_else(|| public.clone());
    let tags: Option<Vec<Value>> = v.get("tags").and_then(Value::as_array).map(|t| {
        t.iter()
            .filter_map(Value::as_str)
            .take(MAX_TAGS)
            .map(|s| Value::from(s.to_owned()))
            .collect()
    });
    let floating = v
        .pointer("/floating_ip/ipv4/active")
        .and_then(Value::as_bool)
        .filter(|a| *a)
        .and_then(|_| text(&v, "/floating_ip/ipv4/ip_address"));
    let mut d = Data::default();
    d.put("droplet_id", Some(id.clone()))
        .put("hostname", text(&v, "/hostname"))
        .put("region", region.clone())
        .put("local_ipv4", local.clone())
        .put("public_ipv4", public.clone())
        .put(
            "public_ipv6",
            text(&v, "/interfaces/public/0/ipv6/ip_address"),
        )
        .put("floating_ipv4", floating)
        .put("tags", tags);
    Ok(Instance {
        driver: Driver::DigitalOcean,
        instance_id: id,
        region,
        zone: None,
        instance_type: None,
        local_ipv4: ip(local.as_deref()),
        public_ipv4: ip(public.as_deref()),
        data: d.0,
    })
}

/// A Scaleway instance from `conf?format=json`.
pub fn scaleway(body: &str) -> Result<Instance, String> {
    let v = json(body, "the instance configuration")?;
    let id = text(&v, "/id").ok_or("the instance configuration has no id")?;
    let zone = text(&v, "/location/zone_id");
    let kind = text(&v, "/commercial_type");
    let local = text(&v, "/private_ip");
    let public = text(&v, "/public_ip/address");
    let tags: Option<Vec<Value>> = v.get("tags").and_then(Value::as_array).map(|t| {
        t.iter()
            .filter_map(Value::as_str)
            .take(MAX_TAGS)
            .map(|s| Value::from(s.to_owned()))
            .collect()
    });
    let mut d = Data::default();
    d.put("id", Some(id.clone()))
        .put("name", text(&v, "/name"))
        .put("hostname", text(&v, "/hostname"))
        .put("commercial_type", kind.clone())
        .put("zone", zone.clone())
        .put("project", text(&v, "/project"))
        .put("organization", text(&v, "/organization"))
        .put("local_ipv4", local.clone())
        .put("public_ipv4", public.clone())
        .put("public_ipv6", text(&v, "/ipv6/address"))
        .put("tags", tags);
    Ok(Instance {
        driver: Driver::Scaleway,
        instance_id: id,
        region: None,
        zone,
        instance_type: kind,
        local_ipv4: ip(local.as_deref()),
        public_ipv4: ip(public.as_deref()),
        data: d.0,
    })
}

/// The `latest/meta-data/` items read from Alibaba Cloud ECS.
pub const ALIBABA_ITEMS: &[&str] = &[
    "instance-id",
    "region-id",
    "zone-id",
    "instance/instance-type",
    "image-id",
    "hostname",
    "vpc-id",
    "private-ipv4",
    "eipv4",
    "public-ipv4",
];

/// An Alibaba Cloud ECS instance from its `meta-data/` items ([`ALIBABA_ITEMS`]; absent ones
/// missing); `instance-id` and `region-id` are required.
pub fn alibaba(items: &BTreeMap<String, String>) -> Result<Instance, String> {
    let get = |k: &str| {
        items
            .get(k)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let id = get("instance-id").ok_or("the metadata has no instance-id")?;
    let region = get("region-id").ok_or("the metadata has no region-id")?;
    let zone = get("zone-id");
    let kind = get("instance/instance-type");
    let local = get("private-ipv4");
    // An elastic IP, else the public address given at creation.
    let public = get("eipv4").or_else(|| get("public-ipv4"));
    let mut d = Data::default();
    d.put("instance_id", Some(id.clone()))
        .put("region", Some(region.clone()))
        .put("zone", zone.clone())
        .put("instance_type", kind.clone())
        .put("image_id", get("image-id"))
        .put("hostname", get("hostname"))
        .put("vpc_id", get("vpc-id"))
        .put("local_ipv4", local.clone())
        .put("public_ipv4", public.clone());
    Ok(Instance {
        driver: Driver::Alibaba,
        instance_id: id,
        region: Some(region),
        zone,
        instance_type: kind,
        local_ipv4: ip(local.as_deref()),
        public_ipv4: ip(public.as_deref()),
        data: d.0,
    })
}

/// The EC2-compatible `latest/meta-data/` items read from OpenStack besides `meta_data.json`.
pub const OPENSTACK_EC2_ITEMS: &[&str] = &["local-ipv4", "public-ipv4", "instance-type"];

/// An OpenStack instance from `openstack/latest/meta_data.json` and the EC2-compatible items
/// ([`OPENSTACK_EC2_ITEMS`], best effort).
pub fn openstack(body: &str, ec2_items: &BTreeMap<String, String>) -> Result<Instance, String> {
    let v = json(body, "meta_data.json")?;
    let uuid = text(&v, "/uuid").ok_or("meta_data.json has no uuid")?;
    let zone = text(&v, "/availability_zone");
    let get = |k: &str| {
        ec2_items
            .get(k)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let local = get("local-ipv4");
    let public = get("public-ipv4");
    let kind = get("instance-type");
    let meta: Option<Map<String, Value>> = v.get("meta").and_then(Value::as_object).map(|m| {
        m.iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), Value::from(s.to_owned()))))
            .take(MAX_TAGS)
            .collect()
    });
    let mut d = Data::default();
    d.put("uuid", Some(uuid.clone()))
        .put("name", text(&v, "/name"))
        .put("hostname", text(&v, "/hostname"))
        .put("availability_zone", zone.clone())
        .put("project_id", text(&v, "/project_id"))
        .put("instance_type", kind.clone())
        .put("local_ipv4", local.clone())
        .put("public_ipv4", public.clone())
        .put("meta", meta.map(Value::Object));
    Ok(Instance {
        driver: Driver::OpenStack,
        instance_id: uuid,
        region: None,
        zone,
        instance_type: kind,
        local_ipv4: ip(local.as_deref()),
        public_ipv4: ip(public.as_deref()),
        data: d.0,
    })
}

/// The detection from a round's `results` (one per service asked): a forced driver is active
/// whatever its service said; otherwise the preferred cloud's answer, else the first answer in
/// [`Driver::ALL`] order, else `fallback` (what the local files show, clouds left out).
pub fn decide(
    settings: &Settings,
    plan: &Plan,
    results: Vec<(Driver, Result<Instance, String>)>,
    fallback: &str,
) -> Detection {
    let probed: Vec<Driver> = results.iter().map(|(d, _)| *d).collect();
    let mut answers = BTreeMap::new();
    let mut failures = Vec::new();
    for (d, r) in results {
        match r {
            Ok(i) if i.driver == d => {
                answers.insert(d, i);
            }
            Ok(i) => failures.push((d, format!("answered as {}", i.driver.name()))),
            Err(e) => failures.push((d, e)),
        }
    }
    let order = plan.preferred.into_iter().chain(
        Driver::ALL
            .into_iter()
            .filter(|d| Some(*d) != plan.preferred),
    );
    let mut chosen = None;
    for d in order {
        if let Some(i) = answers.remove(&d) {
            chosen = Some(i);
            break;
        }
    }
    // Another cloud answering too is odd (a proxy, a test rig): say so.
    for (d, _) in answers {
        failures.push((d, "answered too, but another cloud's answer counts".into()));
    }
    failures.sort_by_key(|(d, _)| Driver::ALL.iter().position(|x| x == d));
    let tried = || {
        probed
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (driver, cloud, detail) = match (settings.mode, &chosen) {
        (Mode::Forced(d), Some(_)) => (
            d.name().to_owned(),
            Some(d),
            format!(
                "{} (hosting.driver), its metadata service answered",
                d.name()
            ),
        ),
        (Mode::Forced(d), None) => (
            d.name().to_owned(),
            Some(d),
            format!(
                "{} (hosting.driver), but its metadata service did not answer: {}",
                d.name(),
                failures
                    .first()
                    .map(|(_, e)| e.as_str())
                    .unwrap_or("not asked")
            ),
        ),
        (_, Some(i)) => (
            i.driver.name().to_owned(),
            Some(i.driver),
            format!("the {} metadata service answered", i.driver.name()),
        ),
        (_, None) => {
            let why = match &plan.skipped {
                Some(s) => s.clone(),
                None => format!("no metadata service answered (asked {})", tried()),
            };
            (fallback.to_owned(), None, why)
        }
    };
    Detection {
        driver,
        cloud,
        instance: chosen,
        probed,
        failures,
        elapsed: std::time::Duration::ZERO,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The identity document as the EC2 user guide shows it.
    const EC2_DOCUMENT: &str = r#"{
        "accountId" : "0123456789",
        "architecture" : "x86_64",
        "availabilityZone" : "eu-west-1b",
        "billingProducts" : null,
        "devpayProductCodes" : null,
        "marketplaceProductCodes" : null,
        "imageId" : "ami-0b69ea66ff7391e80",
        "instanceId" : "i-1234567890abcdef0",
        "instanceType" : "m5.large",
        "kernelId" : null,
        "pendingTime" : "2022-11-19T16:32:11Z",
        "privateIp" : "10.158.112.84",
        "ramdiskId" : null,
        "region" : "eu-west-1",
        "version" : "2017-09-30"
    }"#;

    #[test]
    fn ec2_identity_document_and_items() {
        let a = Ec2Answers {
            document: EC2_DOCUMENT.into(),
            local_ipv4: Some("10.158.112.84".into()),
            public_ipv4: Some("203.0.113.25".into()),
            local_hostname: Some("ip-10-158-112-84.eu-west-1.compute.internal".into()),
            public_hostname: None,
            security_groups: Some("web\nssh\n".into()),
            tags: vec![
                ("Name".into(), "web-1".into()),
                ("env".into(), "prod".into()),
            ],
        };
        let i = ec2(&a).expect("ec2");
        assert_eq!(i.instance_id, "i-1234567890abcdef0");
        assert_eq!(i.region.as_deref(), Some("eu-west-1"));
        assert_eq!(i.zone.as_deref(), Some("eu-west-1b"));
        assert_eq!(i.instance_type.as_deref(), Some("m5.large"));
        assert_eq!(i.public_ipv4, Some("203.0.113.25".parse().expect("ip")));
        assert_eq!(i.data["ami_id"], json!("ami-0b69ea66ff7391e80"));
        assert_eq!(i.data["security_groups"], json!(["web", "ssh"]));
        assert_eq!(i.data["tags"]["env"], json!("prod"));
        assert!(!i.data.contains_key("public_hostname"));
        // No local-ipv4 item: the document's privateIp.
        let bare = ec2(&Ec2Answers {
            document: EC2_DOCUMENT.into(),
            ..Ec2Answers::default()
        })
        .expect("ec2");
        assert_eq!(bare.local_ipv4, Some("10.158.112.84".parse().expect("ip")));
        assert_eq!(bare.public_ipv4, None);
        assert!(
            ec2(&Ec2Answers {
                document: r#"{"region": "x"}"#.into(),
                ..Ec2Answers::default()
            })
            .is_err()
        );
        assert!(
            ec2(&Ec2Answers {
                document: "<html>".into(),
                ..Ec2Answers::default()
            })
            .is_err()
        );
    }

    #[test]
    fn google_cloud_recursive_instance() {
        let body = r#"{
            "attributes": {"ssh-keys": "secret", "startup-script": "echo hi"},
            "cpuPlatform": "Intel Broadwell",
            "description": "",
            "disks": [{"deviceName": "boot", "index": 0, "mode": "READ_WRITE", "type": "PERSISTENT"}],
            "hostname": "web-1.europe-west1-b.c.my-project.internal",
            "id": 5992226485404826147,
            "image": "projects/debian-cloud/global/images/debian-12-bookworm-v20240110",
            "machineType": "projects/337367557486/machineTypes/e2-medium",
            "maintenanceEvent": "NONE",
            "name": "web-1",
            "networkInterfaces": [{
                "accessConfigs": [{"externalIp": "35.184.111.18", "type": "ONE_TO_ONE_NAT"}],
                "dnsServers": ["169.254.169.254"],
                "gateway": "10.132.0.1",
                "ip": "10.132.0.2",
                "mac": "42:01:0a:84:00:02",
                "network": "projects/337367557486/networks/default",
                "subnetmask": "255.255.240.0"
            }],
            "preempted": "FALSE",
            "scheduling": {"automaticRestart": "TRUE", "onHostMaintenance": "MIGRATE", "preemptible": "FALSE"},
            "serviceAccounts": {"default": {"aliases": ["default"], "email": "sa@x", "scopes": []}},
            "tags": ["http-server", "web"],
            "zone": "projects/337367557486/zones/europe-west1-b"
        }"#;
        let i = google_cloud(body, Some("my-project"), Some("337367557486")).expect("gce");
        assert_eq!(i.instance_id, "5992226485404826147");
        assert_eq!(i.zone.as_deref(), Some("europe-west1-b"));
        assert_eq!(i.region.as_deref(), Some("europe-west1"));
        assert_eq!(i.instance_type.as_deref(), Some("e2-medium"));
        assert_eq!(i.public_ipv4, Some("35.184.111.18".parse().expect("ip")));
        assert_eq!(i.local_ipv4, Some("10.132.0.2".parse().expect("ip")));
        assert_eq!(i.data["id"], json!("5992226485404826147"), "ids stay text");
        assert_eq!(i.data["project_id"], json!("my-project"));
        assert_eq!(i.data["tags"], json!(["http-server", "web"]));
        assert_eq!(i.data["image"], json!("debian-12-bookworm-v20240110"));
        let all = serde_json::to_string(&i.data).expect("json");
        assert!(!all.contains("secret") && !all.contains("sa@x"), "{all}");
        assert!(google_cloud("{}", None, None).is_err());
    }

    #[test]
    fn azure_instance_metadata() {
        let body = r#"{
            "compute": {
                "azEnvironment": "AzurePublicCloud",
                "location": "westeurope",
                "name": "examplevmname",
                "offer": "UbuntuServer",
                "osProfile": {"adminUsername": "admin", "computerName": "examplevmname", "disablePasswordAuthentication": "true"},
                "osType": "Linux",
                "publicKeys": [{"keyData": "ssh-rsa 0", "path": "/home/user/.ssh/authorized_keys0"}],
                "publisher": "Canonical",
                "resourceGroupName": "macikgo-test-may-23",
                "resourceId": "/subscriptions/xxx/resourceGroups/macikgo-test-may-23/providers/Microsoft.Compute/virtualMachines/examplevmname",
                "sku": "18.04-LTS",
                "subscriptionId": "xxxxxxxx-xxxxx-xxx-xxx-xxxx",
                "tags": "baz:bash;foo:bar",
                "tagsList": [{"name": "foo", "value": "bar"}, {"name": "baz", "value": "bash"}],
                "version": "18.04.202103250",
                "vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
                "vmScaleSetName": "",
                "vmSize": "Standard_A3",
                "zone": "1"
            },
            "network": {"interface": [{
                "ipv4": {"ipAddress": [{"privateIpAddress": "10.144.133.132", "publicIpAddress": "20.61.1.2"}],
                         "subnet": [{"address": "10.144.133.128", "prefix": "26"}]},
                "ipv6": {"ipAddress": []},
                "macAddress": "0011AAFFBB22"
            }]}
        }"#;
        let i = azure(body).expect("azure");
        assert_eq!(i.instance_id, "02aab8a4-74ef-476e-8182-f6d2ba4166a6");
        assert_eq!(i.region.as_deref(), Some("westeurope"));
        assert_eq!(i.instance_type.as_deref(), Some("Standard_A3"));
        assert_eq!(i.public_ipv4, Some("20.61.1.2".parse().expect("ip")));
        assert_eq!(i.data["tags"], json!({"foo": "bar", "baz": "bash"}));
        assert!(
            !i.data.contains_key("scale_set"),
            "empty values are left out"
        );
        let all = serde_json::to_string(&i.data).expect("json");
        assert!(!all.contains("ssh-rsa"), "{all}");
        // A standard-SKU public address is not shown by IMDS: empty.
        let private = body.replace("20.61.1.2", "");
        assert_eq!(azure(&private).expect("azure").public_ipv4, None);
    }

    #[test]
    fn digitalocean_droplet_metadata() {
        let body = r##"{
            "droplet_id": 2756294,
            "hostname": "sample-droplet",
            "vendor_data": "#cloud-config\ndisable_root: false",
            "public_keys": ["ssh-rsa AAAA sammy@example.com"],
            "auth_key": "88888888888888888888888888888888",
            "region": "nyc3",
            "interfaces": {
                "private": [{"ipv4": {"ip_address": "10.132.255.113", "netmask": "255.255.0.0", "gateway": "10.132.0.1"}, "mac": "04:01:2a:0f:2a:02", "type": "private"}],
                "public": [{"ipv4": {"ip_address": "104.131.20.105", "netmask": "255.255.192.0", "gateway": "104.131.0.1"},
                            "ipv6": {"ip_address": "2604:A880:0800:0010:0000:0000:017D:2001", "cidr": 64, "gateway": "2604:A880:0800:0010:0000:0000:0000:0001"},
                            "mac": "04:01:2a:0f:2a:01", "type": "public"}]
            },
            "floating_ip": {"ipv4": {"active": false}},
            "dns": {"nameservers": ["2001:4860:4860::8844", "8.8.8.8"]},
            "tags": ["web", "prod"],
            "features": {"dhcp_enabled": false}
        }"##;
        let i = digitalocean(body).expect("do");
        assert_eq!(i.instance_id, "2756294");
        assert_eq!(i.region.as_deref(), Some("nyc3"));
        assert_eq!(i.local_ipv4, Some("10.132.255.113".parse().expect("ip")));
        assert_eq!(i.public_ipv4, Some("104.131.20.105".parse().expect("ip")));
        assert!(!i.data.contains_key("floating_ipv4"));
        let all = serde_json::to_string(&i.data).expect("json");
        assert!(!all.contains("8888") && !all.contains("ssh-rsa"), "{all}");
    }

    #[test]
    fn scaleway_conf() {
        let body = r#"{
            "commercial_type": "GP1-M",
            "hostname": "frontend-0",
            "id": "11111111-1111-1111-1111-111111111111",
            "name": "frontend-0",
            "ipv6": {"address": "2001:db8::1"},
            "location": {"zone_id": "par1"},
            "private_ip": "10.0.0.2",
            "public_ip": {"address": "93.184.216.34", "dynamic": false, "id": "96189bf3"},
            "ssh_public_keys": [{"key": "ssh-ed25519 AAAA"}],
            "tags": ["web"]
        }"#;
        let i = scaleway(body).expect("scw");
        assert_eq!(i.zone.as_deref(), Some("par1"));
        assert_eq!(i.instance_type.as_deref(), Some("GP1-M"));
        assert_eq!(i.public_ipv4, Some("93.184.216.34".parse().expect("ip")));
        assert_eq!(i.data["public_ipv6"], json!("2001:db8::1"));
        assert!(scaleway(r#"{"public_ip": null}"#).is_err());
    }

    #[test]
    fn alibaba_items() {
        let items: BTreeMap<String, String> = [
            ("instance-id", "i-bp13znx0m0me8cquu****"),
            ("region-id", "cn-hangzhou"),
            ("zone-id", "cn-hangzhou-i"),
            ("instance/instance-type", "ecs.g6e.large"),
            ("image-id", "aliyun_3_x64_20G_alibase_20210425.vhd"),
            ("private-ipv4", "192.168.0.10"),
            ("eipv4", "47.96.1.2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let i = alibaba(&items).expect("ali");
        assert_eq!(i.region.as_deref(), Some("cn-hangzhou"));
        assert_eq!(i.instance_type.as_deref(), Some("ecs.g6e.large"));
        assert_eq!(i.public_ipv4, Some("47.96.1.2".parse().expect("ip")));
        assert!(alibaba(&BTreeMap::new()).is_err());
    }

    #[test]
    fn openstack_meta_data() {
        let body = r#"{
            "random_seed": "yu5ZnkqF2CqnDZVAfZgarGLoFubhcK5wHG4fcNfVZ",
            "uuid": "d8e02d56-2648-49a3-bf97-6be8f1204f38",
            "availability_zone": "nova",
            "keys": [{"data": "ssh-rsa AAAA", "type": "ssh", "name": "mykey"}],
            "hostname": "test.novalocal",
            "launch_index": 0,
            "meta": {"priority": "low", "role": "webserver"},
            "devices": [],
            "project_id": "f7ac731cc11f40efbc03a9f9e1d1d21f",
            "public_keys": {"mykey": "ssh-rsa AAAA"},
            "name": "test"
        }"#;
        let ec2_items: BTreeMap<String, String> =
            [("local-ipv4", "10.0.0.165"), ("instance-type", "m1.tiny")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        let i = openstack(body, &ec2_items).expect("os");
        assert_eq!(i.instance_id, "d8e02d56-2648-49a3-bf97-6be8f1204f38");
        assert_eq!(i.zone.as_deref(), Some("nova"));
        assert_eq!(i.instance_type.as_deref(), Some("m1.tiny"));
        assert_eq!(i.data["meta"]["role"], json!("webserver"));
        let all = serde_json::to_string(&i.data).expect("json");
        assert!(!all.contains("ssh-rsa") && !all.contains("yu5Z"), "{all}");
    }

    fn answer(driver: Driver) -> Instance {
        Instance {
            driver,
            instance_id: "x".into(),
            region: None,
            zone: None,
            instance_type: None,
            local_ipv4: None,
            public_ipv4: None,
            data: Map::new(),
        }
    }

    fn auto_plan(preferred: Option<Driver>) -> Plan {
        Plan {
            drivers: Driver::ALL.to_vec(),
            preferred,
            skipped: None,
        }
    }

    #[test]
    fn the_answer_that_counts() {
        let auto = Settings::default();
        // Nobody answered: what the files show.
        let none = decide(
            &auto,
            &auto_plan(None),
            vec![
                (Driver::Ec2, Err("connect timeout".into())),
                (Driver::Azure, Err("HTTP 404".into())),
            ],
            "docker-container",
        );
        assert_eq!(none.driver, "docker-container");
        assert_eq!(none.cloud, None);
        assert!(
            none.detail.contains("no metadata service answered"),
            "{}",
            none.detail
        );
        assert_eq!(none.failures.len(), 2);
        // OpenStack's API answered too (clouds serve it): the specific answer counts.
        let two = decide(
            &auto,
            &auto_plan(None),
            vec![
                (Driver::OpenStack, Ok(answer(Driver::OpenStack))),
                (Driver::Ec2, Ok(answer(Driver::Ec2))),
            ],
            "on-premise",
        );
        assert_eq!(two.driver, "ec2");
        assert_eq!(two.failures.len(), 1);
        // The cloud the DMI names wins.
        let preferred = decide(
            &auto,
            &auto_plan(Some(Driver::OpenStack)),
            vec![
                (Driver::OpenStack, Ok(answer(Driver::OpenStack))),
                (Driver::Ec2, Ok(answer(Driver::Ec2))),
            ],
            "on-premise",
        );
        assert_eq!(preferred.driver, "openstack");
        // Forced: active even without an answer.
        let forced = Settings {
            mode: Mode::Forced(Driver::Azure),
            ..Settings::default()
        };
        let f = decide(
            &forced,
            &Plan {
                drivers: vec![Driver::Azure],
                preferred: Some(Driver::Azure),
                skipped: None,
            },
            vec![(Driver::Azure, Err("HTTP 400".into()))],
            "on-premise",
        );
        assert_eq!((f.driver.as_str(), f.cloud), ("azure", Some(Driver::Azure)));
        assert!(f.instance.is_none());
        assert!(f.detail.contains("HTTP 400"), "{}", f.detail);
        // Not asked: the reason is the detail.
        let skipped = decide(
            &auto,
            &Plan {
                drivers: vec![],
                preferred: None,
                skipped: Some("not asked: physical".into()),
            },
            vec![],
            "on-premise",
        );
        assert_eq!(skipped.detail, "not asked: physical");
    }
}

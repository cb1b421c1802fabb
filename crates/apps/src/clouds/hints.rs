//! What the host's own files say about where it runs, before anything is asked on the network:
//! DMI strings (`/sys/class/dmi/id/*`), the Xen hypervisor uuid, the CPU's `hypervisor` flag, and
//! the marks containers and NAS systems leave (`/.dockerenv`, `/etc/synoinfo.conf`). Reading is
//! [`LocalFacts::read`]; everything else here is plain functions of the facts.

use std::path::Path;

use super::{Driver, Mode, Settings};

/// The local files that tell where the host runs (each trimmed; empty when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalFacts {
    /// `/sys/class/dmi/id/sys_vendor`.
    pub sys_vendor: String,
    /// `/sys/class/dmi/id/product_name`.
    pub product_name: String,
    /// `/sys/class/dmi/id/bios_vendor`.
    pub bios_vendor: String,
    /// `/sys/class/dmi/id/board_vendor`.
    pub board_vendor: String,
    /// `/sys/class/dmi/id/chassis_asset_tag`.
    pub chassis_asset_tag: String,
    /// `/sys/hypervisor/uuid` (Xen guests, older EC2 instances).
    pub hypervisor_uuid: String,
    /// The CPU has the `hypervisor` flag (x86 guests of any hypervisor).
    pub cpu_hypervisor_flag: bool,
    /// `/.dockerenv` or `/run/.containerenv` exists, or PID 1's cgroup names docker.
    pub container: bool,
    /// `/etc/synoinfo.conf` exists (a Synology NAS).
    pub synology: bool,
}

/// The chassis asset tag every Azure VM carries.
const AZURE_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";

/// Words in DMI strings that mean a virtual machine (one a cloud might run).
const VIRTUAL: &[&str] = &[
    "qemu",
    "kvm",
    "bochs",
    "xen",
    "red hat",
    "openstack",
    "ovirt",
    "nutanix",
    "vmware",
    "virtualbox",
    "innotek",
    "parallels",
    "microsoft corporation",
    "virtual machine",
    "hetzner",
    "ovh",
    "cloud",
];

impl LocalFacts {
    /// Read the facts of the host whose filesystem is at `root`; missing files are empty.
    pub fn read(root: &Path) -> LocalFacts {
        let read = |rel: &str| {
            std::fs::read_to_string(root.join(rel))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let dmi = |name: &str| read(&format!("sys/class/dmi/id/{name}"));
        let cpuinfo = read("proc/cpuinfo");
        LocalFacts {
            sys_vendor: dmi("sys_vendor"),
            product_name: dmi("product_name"),
            bios_vendor: dmi("bios_vendor"),
            board_vendor: dmi("board_vendor"),
            chassis_asset_tag: dmi("chassis_asset_tag"),
            hypervisor_uuid: read("sys/hypervisor/uuid"),
            cpu_hypervisor_flag: cpuinfo
                .lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "hypervisor")),
            container: root.join(".dockerenv").exists()
                || root.join("run/.containerenv").exists()
                || read("proc/1/cgroup").contains("/docker"),
            synology: root.join("etc/synoinfo.conf").exists(),
        }
    }

    /// The cloud the DMI strings name, if any.
    pub fn cloud(&self) -> Option<Driver> {
        let (vendor, product, bios) = (&self.sys_vendor, &self.product_name, &self.bios_vendor);
        if self.board_vendor == "Amazon EC2"
            || vendor == "Amazon EC2"
            || bios.contains("Amazon")
            || self.hypervisor_uuid.to_ascii_lowercase().starts_with("ec2")
        {
            Some(Driver::Ec2)
        } else if product.contains("Google Compute Engine") || vendor == "Google" {
            Some(Driver::GoogleCloud)
        } else if self.chassis_asset_tag == AZURE_ASSET_TAG {
            Some(Driver::Azure)
        } else if vendor == "DigitalOcean" {
            Some(Driver::DigitalOcean)
        } else if vendor.to_ascii_lowercase().contains("scaleway") {
            Some(Driver::Scaleway)
        } else if vendor.contains("Alibaba") || product.contains("Alibaba") {
            Some(Driver::Alibaba)
        } else if product.contains("OpenStack") || vendor.contains("OpenStack") {
            Some(Driver::OpenStack)
        } else {
            None
        }
    }

    /// What the files say without asking anyone: `docker-container`, a cloud the DMI strings
    /// name, `synology`, else `on-premise` (the original's driver names).
    pub fn files_driver(&self) -> String {
        if self.container {
            return "docker-container".into();
        }
        if let Some(d) = self.cloud() {
            return d.name().into();
        }
        if self.synology {
            return "synology".into();
        }
        "on-premise".into()
    }

    /// The driver when no metadata service counts: what the files show, clouds left out (a
    /// cloud is only active once its service answered, or when `hosting.driver` names it).
    pub fn local_driver(&self) -> String {
        if self.container {
            "docker-container".into()
        } else if self.synology {
            "synology".into()
        } else {
            "on-premise".into()
        }
    }

    /// What the facts say about asking the metadata services.
    pub fn hint(&self) -> Hint {
        if let Some(d) = self.cloud() {
            return Hint::Cloud(d);
        }
        let dmi = [
            &self.sys_vendor,
            &self.product_name,
            &self.bios_vendor,
            &self.board_vendor,
        ];
        if self.sys_vendor.is_empty() {
            // No DMI (a container, an ARM board, a locked-down /sys): nothing to go by.
            return Hint::Unknown;
        }
        let virtual_machine = self.cpu_hypervisor_flag
            || !self.hypervisor_uuid.is_empty()
            || dmi.iter().any(|s| {
                let s = s.to_ascii_lowercase();
                VIRTUAL.iter().any(|w| s.contains(w))
            });
        if virtual_machine {
            Hint::Unknown
        } else {
            Hint::NotACloud(format!(
                "the DMI data names a physical machine ({}{})",
                self.sys_vendor,
                if self.product_name.is_empty() {
                    String::new()
                } else {
                    format!(" {}", self.product_name)
                }
            ))
        }
    }
}

/// What the local files say about where the host runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// The DMI strings name this cloud (its answer wins if several answer).
    Cloud(Driver),
    /// A physical machine: no metadata service to ask (the reason).
    NotACloud(String),
    /// A virtual machine or no DMI at all: ask.
    Unknown,
}

/// Which services to ask, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The services to ask (empty: none).
    pub drivers: Vec<Driver>,
    /// The cloud the files name, whose answer wins.
    pub preferred: Option<Driver>,
    /// Why nothing is asked, when nothing is.
    pub skipped: Option<String>,
}

/// Which services to ask under `settings`, given the local `facts`.
pub fn plan(settings: &Settings, facts: &LocalFacts) -> Plan {
    match settings.mode {
        Mode::Off => Plan {
            drivers: Vec::new(),
            preferred: None,
            skipped: Some("metadata services are not asked (hosting.driver: none)".into()),
        },
        Mode::Forced(d) => Plan {
            drivers: vec![d],
            preferred: Some(d),
            skipped: None,
        },
        Mode::Auto => match facts.hint() {
            Hint::NotACloud(why) if !settings.always_probe => Plan {
                drivers: Vec::new(),
                preferred: None,
                skipped: Some(format!(
                    "metadata services are not asked: {why} (hosting.always_probe: true asks anyway)"
                )),
            },
            Hint::Cloud(d) => Plan {
                drivers: Driver::ALL.to_vec(),
                preferred: Some(d),
                skipped: None,
            },
            Hint::NotACloud(_) | Hint::Unknown => Plan {
                drivers: Driver::ALL.to_vec(),
                preferred: None,
                skipped: None,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(vendor: &str, product: &str) -> LocalFacts {
        LocalFacts {
            sys_vendor: vendor.into(),
            product_name: product.into(),
            ..LocalFacts::default()
        }
    }

    #[test]
    fn dmi_strings_name_clouds_physical_machines_and_virtual_ones() {
        assert_eq!(
            facts("Amazon EC2", "t3.micro").hint(),
            Hint::Cloud(Driver::Ec2)
        );
        assert_eq!(
            facts("Google", "Google Compute Engine").hint(),
            Hint::Cloud(Driver::GoogleCloud)
        );
        assert_eq!(
            facts("OpenStack Foundation", "OpenStack Nova").hint(),
            Hint::Cloud(Driver::OpenStack)
        );
        let azure = LocalFacts {
            chassis_asset_tag: AZURE_ASSET_TAG.into(),
            ..facts("Microsoft Corporation", "Virtual Machine")
        };
        assert_eq!(azure.hint(), Hint::Cloud(Driver::Azure));
        assert!(matches!(
            facts("Dell Inc.", "PowerEdge R640").hint(),
            Hint::NotACloud(why) if why.contains("Dell Inc. PowerEdge R640")
        ));
        assert_eq!(
            facts("QEMU", "Standard PC (Q35 + ICH9, 2009)").hint(),
            Hint::Unknown
        );
        let guest = LocalFacts {
            cpu_hypervisor_flag: true,
            ..facts("Supermicro", "X11")
        };
        assert_eq!(guest.hint(), Hint::Unknown, "a guest CPU is asked");
        assert_eq!(LocalFacts::default().hint(), Hint::Unknown, "no DMI: ask");
    }

    #[test]
    fn plans_follow_the_mode_and_the_hint() {
        let metal = facts("Dell Inc.", "PowerEdge R640");
        let auto = Settings::default();
        let p = plan(&auto, &metal);
        assert!(p.drivers.is_empty());
        assert!(p.skipped.as_deref().is_some_and(|s| s.contains("Dell")));
        let always = Settings {
            always_probe: true,
            ..Settings::default()
        };
        assert_eq!(plan(&always, &metal).drivers, Driver::ALL.to_vec());
        let ec2 = plan(&auto, &facts("Amazon EC2", ""));
        assert_eq!(ec2.preferred, Some(Driver::Ec2));
        assert_eq!(ec2.drivers.len(), 7);
        let forced = Settings {
            mode: Mode::Forced(Driver::Azure),
            ..Settings::default()
        };
        assert_eq!(plan(&forced, &metal).drivers, vec![Driver::Azure]);
        let off = Settings {
            mode: Mode::Off,
            ..Settings::default()
        };
        assert!(plan(&off, &LocalFacts::default()).drivers.is_empty());
    }

    #[test]
    fn files_are_read_from_the_root() {
        let dir = tempfile::tempdir().expect("tmp");
        let put = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        };
        put("sys/class/dmi/id/sys_vendor", "Dell Inc.\n");
        put(
            "proc/cpuinfo",
            "processor\t: 0\nflags\t\t: fpu vme hypervisor sse\n",
        );
        let f = LocalFacts::read(dir.path());
        assert_eq!(f.sys_vendor, "Dell Inc.");
        assert!(f.cpu_hypervisor_flag);
        assert_eq!(f.local_driver(), "on-premise");
        put(".dockerenv", "");
        assert_eq!(
            LocalFacts::read(dir.path()).local_driver(),
            "docker-container"
        );
    }
}

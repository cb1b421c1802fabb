//! Issue 28 (clouds): hosting drivers from instance metadata services, on real (virtual) hosts.
//!
//! Each test builds a LAN of network namespaces where one host owns 169.254.169.254 and runs a
//! metadata server written here (python3 `http.server`) that answers as a provider documents it:
//! EC2 with IMDSv2 tokens required (a GET without a valid token gets 401), Google Compute Engine
//! (`Metadata-Flavor: Google` required and answered), Azure IMDS (`Metadata: true` required). The
//! agent runs on another host of the LAN, whose route to 169.254.169.254 goes over that LAN: no
//! packet leaves the namespaces, nothing touches the host's own network. A last test gives the
//! agent a route to the metadata addresses where nobody answers: detection ends on its own
//! timeouts, with no cloud.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use opsbro_tests::netns::Lan;
use opsbro_tests::{DEADLINE, stderr, stdout, wait_for};
use serde_json::Value;

/// The metadata server: `python3 server.py MODE LOG READY` serves 169.254.169.254:80 as the
/// provider MODE (ec2, gce, azure), appends `METHOD PATH STATUS` to LOG for every request, and
/// creates READY once it listens.
const SERVER: &str = r#"
import http.server, json, sys

MODE, LOG, READY = sys.argv[1], sys.argv[2], sys.argv[3]
TOKEN = "AQAEAFTokenForTheTest=="

EC2_DOCUMENT = {
    "accountId": "123456789012", "architecture": "x86_64", "availabilityZone": "eu-west-1b",
    "billingProducts": None, "devpayProductCodes": None, "marketplaceProductCodes": None,
    "imageId": "ami-0b69ea66ff7391e80", "instanceId": "i-0123456789abcdef0",
    "instanceType": "t3.micro", "kernelId": None, "pendingTime": "2024-05-01T10:00:00Z",
    "privateIp": "10.0.1.15", "ramdiskId": None, "region": "eu-west-1", "version": "2017-09-30",
}
EC2_META = {
    "local-ipv4": "10.0.1.15", "public-ipv4": "203.0.113.10",
    "local-hostname": "ip-10-0-1-15.eu-west-1.compute.internal",
    "public-hostname": "ec2-203-0-113-10.eu-west-1.compute.amazonaws.com",
    "instance-type": "t3.micro", "instance-id": "i-0123456789abcdef0",
    "ami-id": "ami-0b69ea66ff7391e80", "placement/availability-zone": "eu-west-1b",
    "placement/region": "eu-west-1", "security-groups": "web\nssh",
    "tags/instance": "Name\nenv", "tags/instance/Name": "web-1", "tags/instance/env": "prod",
}
GCE_INSTANCE = {
    "attributes": {"ssh-keys": "alice:ssh-ed25519 AAAA alice"},
    "cpuPlatform": "Intel Broadwell", "description": "",
    "hostname": "web-1.europe-west1-b.c.opsbro-test.internal", "id": 5992226485404826147,
    "image": "projects/debian-cloud/global/images/debian-12-bookworm-v20240110",
    "machineType": "projects/123456789012/machineTypes/e2-medium", "name": "web-1",
    "networkInterfaces": [{
        "accessConfigs": [{"externalIp": "198.51.100.20", "type": "ONE_TO_ONE_NAT"}],
        "gateway": "10.132.0.1", "ip": "10.132.0.2", "mac": "42:01:0a:84:00:02",
        "network": "projects/123456789012/networks/default",
    }],
    "scheduling": {"automaticRestart": "TRUE", "onHostMaintenance": "MIGRATE", "preemptible": "FALSE"},
    "serviceAccounts": {"default": {"email": "123-compute@developer.gserviceaccount.com"}},
    "tags": ["http-server"], "zone": "projects/123456789012/zones/europe-west1-b",
}
AZURE_INSTANCE = {
    "compute": {
        "azEnvironment": "AzurePublicCloud", "location": "westeurope", "name": "web-1",
        "offer": "0001-com-ubuntu-server-jammy", "osType": "Linux", "publisher": "Canonical",
        "resourceGroupName": "opsbro-rg", "sku": "22_04-lts-gen2",
        "subscriptionId": "8d10da13-8125-4ba9-a717-bf7490507b3d",
        "tagsList": [{"name": "env", "value": "prod"}], "version": "22.04.202404010",
        "vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6", "vmScaleSetName": "",
        "vmSize": "Standard_D2s_v3", "zone": "2",
    },
    "network": {"interface": [{
        "ipv4": {"ipAddress": [{"privateIpAddress": "10.1.0.4", "publicIpAddress": "192.0.2.44"}],
                 "subnet": [{"address": "10.1.0.0", "prefix": "24"}]},
        "ipv6": {"ipAddress": []}, "macAddress": "000D3A2D6367",
    }]},
}

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body="", content_type="text/plain", headers=()):
        data = body.encode() if isinstance(body, str) else body
        with open(LOG, "a") as f:
            f.write("%s %s %d\n" % (self.command, self.path, status))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if MODE == "ec2" and self.path == "/latest/api/token":
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return self.answer(400)
            return self.answer(200, TOKEN)
        self.answer(405 if MODE == "gce" else 404)

    def do_GET(self):
        path = self.path
        if MODE == "ec2":
            # IMDSv2 required: no valid token, no metadata.
            if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
                return self.answer(401)
            if path == "/latest/dynamic/instance-identity/document":
                return self.answer(200, json.dumps(EC2_DOCUMENT, indent=2), "text/plain")
            item = path[len("/latest/meta-data/"):] if path.startswith("/latest/meta-data/") else None
            if item in EC2_META:
                return self.answer(200, EC2_META[item])
            return self.answer(404)
        if MODE == "gce":
            flavor = [("Metadata-Flavor", "Google")]
            if self.headers.get("Metadata-Flavor") != "Google":
                return self.answer(403, "Missing Metadata-Flavor:Google header.", headers=flavor)
            if path == "/computeMetadata/v1/instance/?recursive=true":
                return self.answer(200, json.dumps(GCE_INSTANCE), "application/json", flavor)
            if path == "/computeMetadata/v1/project/project-id":
                return self.answer(200, "opsbro-test", headers=flavor)
            if path == "/computeMetadata/v1/project/numeric-project-id":
                return self.answer(200, "123456789012", headers=flavor)
            return self.answer(404, headers=flavor)
        if MODE == "azure":
            if path.startswith("/metadata/instance?") and "api-version=" in path:
                if self.headers.get("Metadata") != "true":
                    return self.answer(400, json.dumps({"error": "Bad request. Required metadata header not specified"}), "application/json")
                return self.answer(200, json.dumps(AZURE_INSTANCE), "application/json")
            return self.answer(404)
        self.answer(404)

class Server(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True

server = Server(("169.254.169.254", 80), Handler)
open(READY, "w").close()
server.serve_forever()
"#;

/// The link-local address of the EC2, Google, Azure, DigitalOcean and OpenStack services.
const METADATA_IP: &str = "169.254.169.254";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        stderr(&out)
    );
}

/// A LAN where host 1 serves the metadata of `mode` and host 0 runs the agent.
struct CloudLan {
    server: Option<Child>,
    log: PathBuf,
    lan: Lan,
    _dir: tempfile::TempDir,
}

impl CloudLan {
    fn new(mode: &str) -> CloudLan {
        let lan = Lan::new(2).expect("lan");
        let (agent_ns, metadata_ns) = (lan.hosts[0].ns.clone(), lan.hosts[1].ns.clone());
        // Host 1 owns the metadata address; host 0 reaches it over the LAN (ARP on eth0).
        ip(&[
            "-n",
            &metadata_ns,
            "addr",
            "add",
            &format!("{METADATA_IP}/32"),
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            &agent_ns,
            "route",
            "add",
            &format!("{METADATA_IP}/32"),
            "dev",
            "eth0",
        ]);
        let dir = tempfile::tempdir().expect("tmp");
        let script = dir.path().join("server.py");
        std::fs::write(&script, SERVER).expect("script");
        let (log, ready) = (dir.path().join("requests.log"), dir.path().join("ready"));
        let server = Command::new("ip")
            .args(["netns", "exec", &metadata_ns, "python3"])
            .arg(&script)
            .arg(mode)
            .arg(&log)
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("server.err")).expect("err file"))
            .spawn()
            .expect("start the metadata server (python3)");
        let mut cloud = CloudLan {
            server: Some(server),
            log,
            lan,
            _dir: dir,
        };
        let err = cloud._dir.path().join("server.err");
        let child = cloud.server.as_mut().expect("just set");
        wait_for("the metadata server", DEADLINE, || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the metadata server exited with {status}: {}",
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            ready.exists().then_some(())
        })
        .expect("metadata server up");
        cloud
    }

    /// Every request the server answered: `METHOD PATH STATUS`.
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for CloudLan {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn json_of(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}\n{}", stdout(out), stderr(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

fn eval(lan: &Lan, i: usize, expr: &str) -> String {
    let out = lan.cli(i, &["evaluator", "eval", expr]);
    assert!(out.status.success(), "{expr}: {}", stderr(&out));
    stdout(&out).trim().to_owned()
}

/// Wait until collector `name` on host `i` is `ok`; its data.
fn wait_collector(lan: &Lan, i: usize, name: &str) -> Value {
    let mut last = Value::Null;
    wait_for(&format!("collector.{name} ok"), DEADLINE, || {
        let out = lan.cli(i, &["collectors", "show", name, "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        last = v[name].clone();
        (last["state"] == "ok").then(|| last["data"].clone())
    })
    .unwrap_or_else(|e| panic!("{e}; last: {last}\nlog:\n{}", lan.log(i)))
}

/// Wait until host `i`'s groups hold every one of `groups`; its `agent info`.
fn wait_groups(lan: &Lan, i: usize, groups: &[&str]) -> Value {
    let mut last = Value::Null;
    wait_for(&format!("groups {groups:?}"), DEADLINE, || {
        last = json_of(&lan.cli(i, &["agent", "info", "--json"]));
        let have: Vec<&str> = last["groups"]
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        groups
            .iter()
            .all(|g| have.contains(g))
            .then(|| last.clone())
    })
    .unwrap_or_else(|e| panic!("{e}; groups: {}\nlog:\n{}", last["groups"], lan.log(i)))
}

const PROBE_ALL: &str = "hosting:\n  always_probe: true\n";

#[test]
fn ec2_with_imdsv2_is_the_hosting_driver_collected_grouped_and_its_public_address_announced() {
    let mut cloud = CloudLan::new("ec2");
    cloud
        .lan
        .start_agent(
            0,
            "hosting:\n  always_probe: true\n  advertise_public_address: true\n",
            &[],
        )
        .expect("agent");
    let lan = &cloud.lan;
    assert_eq!(eval(lan, 0, "hosting_driver_is_active('ec2')"), "true");
    assert_eq!(
        eval(lan, 0, "hosting_driver_is_active('on-premise')"),
        "false"
    );

    let data = wait_collector(lan, 0, "ec2");
    assert_eq!(data["region"], "eu-west-1", "{data}");
    assert_eq!(data["instance_id"], "i-0123456789abcdef0", "{data}");
    assert_eq!(data["availability_zone"], "eu-west-1b", "{data}");
    assert_eq!(data["instance_type"], "t3.micro", "{data}");
    assert_eq!(data["public_ipv4"], "203.0.113.10", "{data}");
    assert_eq!(
        data["tags"]["env"], "prod",
        "tags allowed in metadata: {data}"
    );

    let info = wait_groups(
        lan,
        0,
        &[
            "ec2",
            "ec2-region::eu-west-1",
            "ec2-az::eu-west-1b",
            "ec2-instance-type::t3.micro",
        ],
    );
    assert_eq!(info["hosting"]["driver"], "ec2", "{}", info["hosting"]);
    assert_eq!(info["hosting"]["public_addr"], "203.0.113.10");
    assert_eq!(info["hosting"]["local_addr"], "10.0.1.15");
    assert!(
        info["hosting"]["probe_ms"]
            .as_u64()
            .is_some_and(|ms| ms < 2000),
        "{}",
        info["hosting"]
    );
    // hosting.advertise_public_address: peers are told the cloud's public address.
    assert_eq!(info["addresses"]["advertise"], "203.0.113.10", "{info}");
    let public = lan.cli(0, &["agent", "print", "public-addr"]);
    assert_eq!(stdout(&public).trim(), "203.0.113.10");
    let text = stdout(&lan.cli(0, &["agent", "info"]));
    assert!(
        text.contains(
            "ec2 (i-0123456789abcdef0, eu-west-1b, t3.micro), public address 203.0.113.10"
        ),
        "{text}"
    );
    assert!(
        lan.log(0).contains("hosting driver ec2"),
        "the start log names the driver:\n{}",
        lan.log(0)
    );
    assert_eq!(
        eval(lan, 0, "is_in_group('ec2-region::eu-west-1')"),
        "true",
        "expressions see the group"
    );

    // The token flow: a token first, then every GET the agent made carried it (the server
    // answers 401 to any GET without it, which also turns away the other providers' probes).
    let requests = cloud.requests();
    assert!(
        requests.iter().any(|r| r == "PUT /latest/api/token 200"),
        "{requests:#?}"
    );
    let ec2_gets: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with("GET /latest/"))
        .collect();
    assert!(
        ec2_gets
            .iter()
            .any(|r| *r == "GET /latest/dynamic/instance-identity/document 200"),
        "{requests:#?}"
    );
    assert!(
        ec2_gets.iter().all(|r| !r.ends_with(" 401")),
        "every EC2 GET carries the token: {requests:#?}"
    );
}

#[test]
fn google_cloud_metadata_server_makes_google_cloud_the_driver() {
    let mut cloud = CloudLan::new("gce");
    cloud.lan.start_agent(0, PROBE_ALL, &[]).expect("agent");
    let lan = &cloud.lan;
    assert_eq!(
        eval(lan, 0, "hosting_driver_is_active('google-cloud')"),
        "true"
    );
    assert_eq!(eval(lan, 0, "hosting_driver_is_active('ec2')"), "false");
    let data = wait_collector(lan, 0, "googlecloud");
    assert_eq!(data["zone"], "europe-west1-b", "{data}");
    assert_eq!(data["region"], "europe-west1", "{data}");
    assert_eq!(data["machine_type"], "e2-medium", "{data}");
    assert_eq!(data["project_id"], "opsbro-test", "{data}");
    assert_eq!(data["id"], "5992226485404826147", "{data}");
    assert_eq!(data["public_ipv4"], "198.51.100.20", "{data}");
    let all = data.to_string();
    assert!(
        !all.contains("ssh-ed25519") && !all.contains("gserviceaccount"),
        "no keys nor service accounts in collector values: {all}"
    );
    let info = wait_groups(
        lan,
        0,
        &[
            "google-cloud",
            "google-cloud-zone::europe-west1-b",
            "google-cloud-machine-type::e2-medium",
            "http-server",
        ],
    );
    assert_eq!(info["hosting"]["instance_id"], "5992226485404826147");
    // The other collectors are not eligible here.
    let ec2 = json_of(&lan.cli(0, &["collectors", "show", "ec2", "--json"]));
    assert_eq!(ec2["ec2"]["state"], "not-eligible", "{ec2}");
    let requests = cloud.requests();
    assert!(
        requests
            .iter()
            .any(|r| r == "GET /computeMetadata/v1/instance/?recursive=true 200"),
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .filter(|r| r.starts_with("GET /computeMetadata/"))
            .all(|r| !r.ends_with(" 403")),
        "every request carries Metadata-Flavor: {requests:#?}"
    );
}

#[test]
fn azure_imds_makes_azure_the_driver() {
    let mut cloud = CloudLan::new("azure");
    cloud.lan.start_agent(0, PROBE_ALL, &[]).expect("agent");
    let lan = &cloud.lan;
    assert_eq!(eval(lan, 0, "hosting_driver_is_active('azure')"), "true");
    let data = wait_collector(lan, 0, "azure");
    assert_eq!(data["location"], "westeurope", "{data}");
    assert_eq!(data["vm_size"], "Standard_D2s_v3", "{data}");
    assert_eq!(
        data["vm_id"], "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
        "{data}"
    );
    assert_eq!(data["public_ipv4"], "192.0.2.44", "{data}");
    assert_eq!(data["tags"]["env"], "prod", "{data}");
    let info = wait_groups(
        lan,
        0,
        &[
            "azure",
            "azure-location::westeurope",
            "azure-vmsize::Standard_D2s_v3",
        ],
    );
    assert_eq!(info["hosting"]["region"], "westeurope");
    // Without hosting.advertise_public_address the announced address stays the LAN's.
    assert_eq!(
        info["addresses"]["advertise"],
        lan.hosts[0].ip.to_string(),
        "{info}"
    );
    let requests = cloud.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("GET /metadata/instance?api-version=2021-02-01 200")),
        "{requests:#?}"
    );
    assert!(
        requests.iter().all(|r| !r.ends_with(" 400")),
        "every request carries Metadata: true: {requests:#?}"
    );
}

/// The metadata addresses are routed onto the LAN but nobody owns them: every connection waits
/// for an ARP answer that never comes, until the agent's own timeouts.
#[test]
fn without_a_metadata_server_detection_ends_within_two_seconds_with_no_cloud() {
    let mut lan = Lan::new(1).expect("lan");
    let ns = lan.hosts[0].ns.clone();
    for addr in [METADATA_IP, "169.254.42.42", "100.100.100.200"] {
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            &format!("{addr}/32"),
            "dev",
            "eth0",
        ]);
    }
    lan.start_agent(0, PROBE_ALL, &[]).expect("agent");
    let info = json_of(&lan.cli(0, &["agent", "info", "--json"]));
    let hosting = &info["hosting"];
    assert!(hosting["cloud"].is_null(), "{hosting}");
    let driver = hosting["driver"].as_str().unwrap_or_default();
    assert!(
        ["on-premise", "docker-container"].contains(&driver),
        "what the local files show: {hosting}"
    );
    assert_eq!(
        hosting["probed"].as_array().map(Vec::len),
        Some(7),
        "every service was asked: {hosting}"
    );
    assert!(
        hosting["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no metadata service answered")),
        "{hosting}"
    );
    // A bound on start-up delay, as the agent measured it (not a benchmark).
    let ms = hosting["probe_ms"].as_u64().expect("probe_ms");
    assert!(ms < 2000, "detection took {ms} ms: {hosting}");
    assert!(
        lan.log(0).contains(&format!("hosting driver {driver}")),
        "{}",
        lan.log(0)
    );
    for cloud in ["ec2", "google-cloud", "azure", "openstack"] {
        assert_eq!(
            eval(&lan, 0, &format!("hosting_driver_is_active('{cloud}')")),
            "false"
        );
    }
    assert_eq!(
        eval(&lan, 0, &format!("hosting_driver_is_active('{driver}')")),
        "true"
    );
    let ec2 = wait_for("collector.ec2 run", DEADLINE, || {
        let out = lan.cli(0, &["collectors", "show", "ec2", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["ec2"]["state"].is_string().then_some(v)
    })
    .expect("ec2 collector ran");
    assert_eq!(ec2["ec2"]["state"], "not-eligible", "{ec2}");
}

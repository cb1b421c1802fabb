//! The graphite reference implementation as test peers: a carbon-cache (Debian
//! `graphite-carbon`) writing whisper files, and graphite-web (Debian `graphite-web` 1.1) reading
//! them, each on free loopback ports with temporary storage, stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::services::free_port;
use crate::{DEADLINE, http, wait_for};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A carbon-cache (Debian graphite-carbon) writing whisper files (one archive, 60 s points
/// kept a day: the finest resolution of opsbro's store) under `dir`.
pub struct Carbon {
    child: Child,
    /// Where the whisper files are.
    pub whisper: PathBuf,
}

impl Carbon {
    /// Start one listening for plaintext lines on `port`.
    pub fn start(dir: &Path, port: u16) -> Carbon {
        let whisper = dir.join("whisper");
        for d in ["whisper", "storage", "log"] {
            std::fs::create_dir_all(dir.join(d)).expect("mkdir");
        }
        let pickle = free_port().expect("port");
        let query = free_port().expect("port");
        std::fs::write(
            dir.join("carbon.conf"),
            format!(
                "[cache]\nSTORAGE_DIR = {d}/storage\nLOCAL_DATA_DIR = {d}/whisper\n\
                 WHITELISTS_DIR = {d}/storage/lists\nCONF_DIR = {d}\nLOG_DIR = {d}/log\nPID_DIR = {d}\n\
                 ENABLE_LOGROTATION = False\nUSER =\nMAX_CACHE_SIZE = inf\nMAX_UPDATES_PER_SECOND = 100000\n\
                 MAX_CREATES_PER_MINUTE = inf\nLINE_RECEIVER_INTERFACE = 127.0.0.1\n\
                 LINE_RECEIVER_PORT = {port}\nENABLE_UDP_LISTENER = False\n\
                 PICKLE_RECEIVER_INTERFACE = 127.0.0.1\nPICKLE_RECEIVER_PORT = {pickle}\n\
                 CACHE_QUERY_INTERFACE = 127.0.0.1\nCACHE_QUERY_PORT = {query}\nENABLE_TAGS = False\n\
                 WHISPER_AUTOFLUSH = True\n",
                d = dir.display()
            ),
        )
        .expect("carbon.conf");
        std::fs::write(
            dir.join("storage-schemas.conf"),
            "[default]\npattern = .*\nretentions = 60s:1d\n",
        )
        .expect("schemas");
        let child = Command::new("carbon-cache")
            .arg(format!("--config={}/carbon.conf", dir.display()))
            .args(["--debug", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "carbon-cache (Debian graphite-carbon) must be installed: bash .ci/install-deps.sh",
            );
        Carbon { child, whisper }
    }

    /// The whisper file of `metric`.
    pub fn file(&self, metric: &str) -> PathBuf {
        self.whisper
            .join(format!("{}.wsp", metric.replace('.', "/")))
    }

    /// `whisper-fetch` of the last 10 minutes: the known values.
    pub fn fetch(&self, metric: &str) -> Vec<f64> {
        let file = self.file(metric);
        if !file.exists() {
            return Vec::new();
        }
        let out = Command::new("whisper-fetch")
            .arg(format!("--from={}", now() - 600))
            .arg(&file)
            .output()
            .expect("whisper-fetch (Debian python3-whisper)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect()
    }
}

impl Drop for Carbon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// graphite-web (Debian `graphite-web`, its Django app under `graphite-manage runserver`)
/// reading the whisper files under `whisper`, in UTC, with input validation enforced (so that
/// bad arguments are 400s, as opsbro gives them).
pub struct GraphiteWeb {
    child: Child,
    /// Its HTTP address.
    pub addr: std::net::SocketAddr,
    log: PathBuf,
}

impl GraphiteWeb {
    /// Start it with its settings and database under `dir`.
    pub fn start(dir: &Path, whisper: &Path) -> Result<GraphiteWeb> {
        std::fs::create_dir_all(dir.join("log"))?;
        std::fs::write(
            dir.join("opsbro_gw_settings.py"),
            format!(
                "SECRET_KEY = 'opsbro-tests'\nTIME_ZONE = 'UTC'\nSTORAGE_DIR = '{d}'\n\
                 WHISPER_DIR = '{w}'\nSTANDARD_DIRS = ['{w}']\nLOG_DIR = '{d}/log'\n\
                 INDEX_FILE = '{d}/index'\nCARBONLINK_HOSTS = []\nDEFAULT_XFILES_FACTOR = 0\n\
                 ENFORCE_INPUT_VALIDATION = True\nDEFAULT_CACHE_DURATION = 0\n\
                 DATABASES = {{'default': {{'NAME': '{d}/graphite.db', 'ENGINE': 'django.db.backends.sqlite3'}}}}\n",
                d = dir.display(),
                w = whisper.display()
            ),
        )?;
        let port = free_port()?;
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let log = dir.join("log/runserver.log");
        let child = Command::new("graphite-manage")
            .args(["runserver", &format!("127.0.0.1:{port}"), "--noreload"])
            .env("PYTHONPATH", dir)
            .env("GRAPHITE_SETTINGS_MODULE", "opsbro_gw_settings")
            .env("DJANGO_SETTINGS_MODULE", "graphite.settings")
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(dir.join("log/runserver.err"))?)
            .spawn()
            .context(
                "graphite-manage (Debian graphite-web) must be installed: bash .ci/install-deps.sh",
            )?;
        let web = GraphiteWeb { child, addr, log };
        wait_for("graphite-web answering", DEADLINE * 2, || {
            http(
                addr,
                "GET",
                "/render?target=constantLine(1)&format=json",
                &[],
                b"",
            )
            .ok()
            .filter(|a| a.status == 200)
        })
        .with_context(|| web.log())?;
        Ok(web)
    }

    /// What it printed.
    pub fn log(&self) -> String {
        let err = self.log.with_file_name("runserver.err");
        format!(
            "{}{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(err).unwrap_or_default()
        )
    }
}

impl Drop for GraphiteWeb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

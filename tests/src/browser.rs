//! A chromedriver for the web UI tests: started on a free loopback port, in its own process
//! group so that the headless Chromium it launches goes with it when the test ends (killed on
//! drop, even when the test panics). The tests drive it with a WebDriver client.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

/// Where Debian's `chromium` package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Browser flags: headless, no GPU, a laptop-sized window (the sandbox needs user namespaces
/// that containers and root do not get).
pub const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--window-size=1280,900",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
];

/// A running chromedriver.
pub struct ChromeDriver {
    child: Child,
    /// Its WebDriver port on 127.0.0.1.
    pub port: u16,
}

impl ChromeDriver {
    /// Start chromedriver and wait until it answers `/status`.
    pub fn start() -> Result<ChromeDriver> {
        if !std::path::Path::new(CHROMIUM).exists() {
            bail!("{CHROMIUM} is missing: install chromium (bash .ci/install-deps.sh)");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("start chromedriver: install chromium-driver (bash .ci/install-deps.sh)")?;
        let mut driver = ChromeDriver { child, port };
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        crate::wait_for("chromedriver to answer", crate::DEADLINE, || {
            if let Ok(Some(status)) = driver.child.try_wait() {
                return Some(Err(anyhow::anyhow!("chromedriver exited with {status}")));
            }
            // Listening is enough: the WebDriver client's first request waits for it to be ready.
            std::net::TcpStream::connect(addr).ok().map(|_| Ok(()))
        })??;
        Ok(driver)
    }

    /// The WebDriver URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browsers it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! The cloud collectors: `collector.<cloud>.*` is what the active cloud's metadata service said
//! (the detection's answer, asked again at most every [`REFRESH`]). A collector whose cloud is
//! not the active driver reports nothing, so it shows as not eligible; one whose cloud was forced
//! (`hosting.driver`) but whose service never answered is in error with the reason.

use std::time::Instant;

use serde_json::{Map, Value};

use super::{Driver, Hosting, REFRESH, http};
use crate::{AppCollector, CollectFuture, Params};

/// The collector of one cloud.
#[derive(Debug)]
pub struct CloudCollector {
    driver: Driver,
    hosting: Hosting,
}

impl CloudCollector {
    /// The collector of `driver`, reading `hosting`.
    pub fn new(driver: Driver, hosting: Hosting) -> CloudCollector {
        CloudCollector { driver, hosting }
    }
}

/// What a run does, decided under the lock.
enum Step {
    /// Not this cloud: nothing to report.
    Inactive,
    /// The kept values are recent enough.
    Kept(Map<String, Value>),
    /// The last attempt failed recently and there is nothing kept: say why again.
    Failed(String),
    /// Ask the service again (keeping the old values if it does not answer).
    Ask(
        http::Endpoints,
        std::time::Duration,
        Option<Map<String, Value>>,
    ),
}

impl CloudCollector {
    fn step(&self, now: Instant) -> Step {
        let guard = self
            .hosting
            .inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(s) = guard.as_ref() else {
            return Step::Inactive;
        };
        if s.detection.cloud != Some(self.driver) {
            return Step::Inactive;
        }
        let kept = s.detection.instance.as_ref().map(|i| i.data.clone());
        if now.duration_since(s.asked) < REFRESH {
            return match (kept, &s.refresh_error) {
                (Some(data), _) => Step::Kept(data),
                (None, Some(e)) => Step::Failed(e.clone()),
                (None, None) => Step::Failed(format!(
                    "the {} metadata service did not answer: {}",
                    self.driver.name(),
                    s.detection.detail
                )),
            };
        }
        Step::Ask(s.endpoints.clone(), s.settings.request_timeout, kept)
    }
}

impl AppCollector for CloudCollector {
    fn name(&self) -> &'static str {
        self.driver.collector()
    }

    /// Every host runs it; it reports nothing where its cloud is not the driver.
    fn group(&self) -> Option<&'static str> {
        None
    }

    fn pack(&self) -> &'static str {
        self.driver.name()
    }

    fn collect<'a>(&'a mut self, _params: &'a Params) -> CollectFuture<'a> {
        Box::pin(async move {
            let (endpoints, timeout, kept) = match self.step(Instant::now()) {
                Step::Inactive => return Ok(Value::Object(Map::new())),
                Step::Kept(data) => return Ok(Value::Object(data)),
                Step::Failed(e) => return Err(e),
                Step::Ask(endpoints, timeout, kept) => (endpoints, timeout, kept),
            };
            let answer = http::fetch(self.driver, &endpoints, timeout).await;
            let mut out = None;
            self.hosting.write(|s| {
                s.asked = Instant::now();
                match answer {
                    Ok(instance) => {
                        s.refresh_error = None;
                        out = Some(Ok(instance.data.clone()));
                        s.detection.instance = Some(instance);
                    }
                    Err(e) => {
                        let e = format!(
                            "the {} metadata service did not answer: {e}",
                            self.driver.name()
                        );
                        s.refresh_error = Some(e.clone());
                        // Metadata barely changes: the values kept stay, with why they are old.
                        out = Some(match kept {
                            Some(mut data) => {
                                data.insert("refresh_error".into(), Value::from(e));
                                Ok(data)
                            }
                            None => Err(e),
                        });
                    }
                }
            });
            out.unwrap_or_else(|| Err("the hosting detection is gone".into()))
                .map(Value::Object)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Detection, Instance, Mode, Settings};
    use super::*;
    use std::time::Duration;

    fn detection(cloud: Option<Driver>, instance: Option<Instance>) -> Detection {
        Detection {
            driver: cloud.map_or("on-premise", Driver::name).into(),
            cloud,
            instance,
            probed: Driver::ALL.to_vec(),
            failures: Vec::new(),
            elapsed: Duration::from_millis(3),
            detail: "test".into(),
        }
    }

    fn instance() -> Instance {
        let mut data = Map::new();
        data.insert("region".into(), Value::from("eu-west-1"));
        Instance {
            driver: Driver::Ec2,
            instance_id: "i-1".into(),
            region: Some("eu-west-1".into()),
            zone: None,
            instance_type: None,
            local_ipv4: None,
            public_ipv4: None,
            data,
        }
    }

    #[tokio::test]
    async fn only_the_active_cloud_reports_and_from_what_it_kept() {
        let hosting = Hosting::new(
            detection(Some(Driver::Ec2), Some(instance())),
            Settings::default(),
        );
        let params = Params::new();
        let mut ec2 = CloudCollector::new(Driver::Ec2, hosting.clone());
        let mut azure = CloudCollector::new(Driver::Azure, hosting.clone());
        assert_eq!(ec2.name(), "ec2");
        assert_eq!(ec2.group(), None);
        let got = ec2.collect(&params).await.expect("kept values");
        assert_eq!(got["region"], Value::from("eu-west-1"));
        let none = azure.collect(&params).await.expect("nothing");
        assert_eq!(none, Value::Object(Map::new()));
        let never = CloudCollector::new(Driver::Ec2, Hosting::default())
            .collect(&params)
            .await
            .expect("no detection: nothing");
        assert_eq!(never, Value::Object(Map::new()));
    }

    #[tokio::test]
    async fn a_forced_cloud_that_never_answered_is_an_error() {
        let settings = Settings {
            mode: Mode::Forced(Driver::Azure),
            ..Settings::default()
        };
        let hosting = Hosting::new(detection(Some(Driver::Azure), None), settings);
        let e = CloudCollector::new(Driver::Azure, hosting)
            .collect(&Params::new())
            .await
            .expect_err("no values");
        assert!(e.contains("azure metadata service did not answer"), "{e}");
    }
}

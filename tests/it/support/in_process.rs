//! A server assembled in this process, its router driven with `tower::ServiceExt::oneshot`:
//! for the API's contracts and error shapes, without a process, a socket or a port. The
//! store, the configuration and the manifests are real (a project in a temp dir, `init`ed
//! by the binary); the first reconcile is done before the first request, as `serve` does.

use std::sync::Arc;

use axum::body::Body;
use http_body_util::BodyExt;
use orchestrator::api::App;
use serde_json::Value;
use tower::ServiceExt;

use super::project;

/// The address the router's guard is built for; requests carry it as their `Host`.
const ADDRESS: &str = "127.0.0.1:8080";

/// An assembled server and its router.
pub(crate) struct InProcess {
    /// What the routes share.
    pub(crate) app: Arc<App>,
    router: axum::Router,
    runtime: tokio::runtime::Runtime,
    _project: tempfile::TempDir,
}

/// One answer: its status and its body, as JSON when it is JSON.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The status code.
    pub(crate) status: u16,
    /// The body as JSON (`Value::Null` when it is not JSON).
    pub(crate) json: Value,
    /// The body as text.
    pub(crate) text: String,
}

impl Answer {
    /// The `{error: {code, message, details}}` of an error answer with this status and
    /// code; returns its message.
    #[track_caller]
    pub(crate) fn expect_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{self:?}");
        let error = &self.json["error"];
        assert_eq!(error["code"], code, "{self:?}");
        assert!(error.get("details").is_some(), "no details: {self:?}");
        error["message"].as_str().expect("a message").to_owned()
    }

    /// The JSON body of an answer with this status.
    #[track_caller]
    pub(crate) fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        self.json.clone()
    }
}

impl InProcess {
    /// A project `init`ed with these files, then `edit` applied to its development
    /// configuration, assembled and reconciled.
    pub(crate) fn start(files: &[(&str, &str)], edit: Option<(&str, &str)>) -> InProcess {
        InProcess::assemble(files, edit, None)
    }

    /// [`InProcess::start`] with a dispatcher to workers over `nats` (the tests' lease),
    /// as `orchestrator start --nats URL` builds it.
    pub(crate) fn start_with_workers(files: &[(&str, &str)], nats: &super::Nats) -> InProcess {
        InProcess::assemble(files, None, Some(nats.url()))
    }

    fn assemble(
        files: &[(&str, &str)],
        edit: Option<(&str, &str)>,
        nats: Option<String>,
    ) -> InProcess {
        let project = project(files);
        let dir = project.path();
        if let Some((from, to)) = edit {
            super::edit_config(dir, from, to);
        }
        let config = orchestrator::config::load(&orchestrator::config::ConfigOptions {
            project_dir: dir.to_path_buf(),
            environment: None,
            config_file: None,
            env_vars: Vec::new(),
        })
        .expect("the configuration loads");
        let data_dir = config.resolve(&config.config.storage.data_dir);
        let workers = nats.map(|url| {
            let distributed = orchestrator::config::DistributedConfig {
                nats: orchestrator::config::NatsConfig {
                    url,
                    ..Default::default()
                },
                lease: Some(orchestrator::config::DurationSetting::Text(
                    super::nats::TEST_LEASE.into(),
                )),
                queue_timeout: None,
                max_deliver: None,
            };
            let settings = orchestrator::workers::dispatch::DispatchSettings::from_config(
                &distributed,
                config.project_dir.clone(),
                vec![data_dir.clone()],
                data_dir.join("remote-artifacts"),
            );
            Arc::new(
                orchestrator::workers::dispatch::Dispatcher::connect(&distributed, settings)
                    .expect("the dispatcher connects"),
            )
        });
        let engine =
            orchestrator::workers::route::engine_config(&config, data_dir.clone(), workers.clone());
        let assembled = orchestrator::server::assemble(
            config,
            "development".into(),
            data_dir,
            engine,
            &orchestrator::server::StartOptions {
                host: "127.0.0.1".into(),
                port: 8080,
                insecure: false,
                grace: std::time::Duration::from_secs(1),
                source: None,
                workers,
            },
        )
        .expect("the server assembles");
        orchestrator::controller::reconcile(&assembled.app.controller, &[], true, false, "start")
            .expect("the first reconcile");
        let router =
            orchestrator::server::router(&assembled.app, ADDRESS.parse().expect("an address"));
        InProcess {
            app: assembled.app,
            router,
            runtime: tokio::runtime::Runtime::new().expect("a runtime"),
            _project: project,
        }
    }

    /// Sends one request through the router: JSON bodies say so unless `content_type`
    /// says otherwise.
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> Answer {
        let mut headers = vec![("host", ADDRESS)];
        if !body.is_empty() || method != "GET" {
            headers.push(("content-type", content_type.unwrap_or("application/json")));
        }
        self.send(method, path, &headers, body)
    }

    /// Sends one request with exactly these headers (and its `Content-Length`).
    pub(crate) fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut request = axum::http::Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .header("content-length", body.len())
            .body(Body::from(body.to_owned()))
            .expect("a request");
        let router = self.router.clone();
        self.runtime.block_on(async move {
            let response = router.oneshot(request).await.expect("an answer");
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("the body")
                .to_bytes();
            Answer {
                status,
                json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                text: String::from_utf8_lossy(&bytes).into_owned(),
            }
        })
    }

    /// `GET path`.
    pub(crate) fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None, "")
    }

    /// `POST path` with a JSON body.
    pub(crate) fn post(&self, path: &str, body: &str) -> Answer {
        self.call("POST", path, None, body)
    }
}

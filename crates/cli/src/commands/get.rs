//! `runplane get KIND [NAME]` and `runplane describe KIND NAME`.

use crate::client::Client;
use crate::exit::CliError;
use crate::output::{self, run_duration, text, time, Column, Format};
use clap::{Args, ValueEnum};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    #[value(alias = "project")]
    Projects,
    #[value(alias = "function", alias = "fn")]
    Functions,
    #[value(alias = "workflow")]
    Workflows,
    #[value(alias = "task")]
    Tasks,
    #[value(alias = "run")]
    Runs,
    #[value(alias = "service", alias = "svc")]
    Services,
    #[value(alias = "trigger")]
    Triggers,
    #[value(alias = "artifact")]
    Artifacts,
    #[value(alias = "secret")]
    Secrets,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    pub kind: Kind,
    pub name: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
    /// Runs: only of this function.
    #[arg(long)]
    pub function: Option<String>,
    /// Runs: only the step runs of this workflow run (id).
    #[arg(long)]
    pub step_of: Option<String>,
    /// Runs: only in these states (comma-separated).
    #[arg(long)]
    pub state: Option<String>,
    /// Runs: only with these labels (key=value, comma-separated).
    #[arg(short = 'l', long)]
    pub label: Option<String>,
    /// Runs: at most this many (newest first).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Runs: after the table, print each run change of the project as it happens (until
    /// Ctrl-C). `--function` and `--state` filter the changes too.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    pub kind: Kind,
    pub name: String,
    #[arg(short = 'o', long, value_enum, default_value = "yaml")]
    pub output: Format,
}

pub async fn get(client: &Client, args: GetArgs) -> Result<(), CliError> {
    if args.watch {
        return watch(client, args).await;
    }
    list(client, &args).await
}

/// `get runs --watch`: the table, then the changes (see [`super::watch`]).
async fn watch(client: &Client, args: GetArgs) -> Result<(), CliError> {
    if args.kind != Kind::Runs || args.name.is_some() {
        return Err(CliError::invalid(
            "--watch works with `get runs` (without a NAME)",
        ));
    }
    // Events carry no labels: a label filter could not be kept on the changes.
    if args.label.is_some() {
        return Err(CliError::invalid("--watch cannot be combined with --label"));
    }
    let states = args
        .state
        .iter()
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_ascii_uppercase())
        .filter(|s| !s.is_empty())
        .collect();
    let filter = super::watch::RunFilter {
        function: args.function.clone(),
        states,
    };
    super::watch::watch_runs(client, filter, args.output, list(client, &args)).await
}

async fn list(client: &Client, args: &GetArgs) -> Result<(), CliError> {
    let value: Value = match (args.kind, &args.name) {
        (Kind::Projects, None) => client.get_json(&client.url("/api/v1/projects")).await?,
        (Kind::Projects, Some(name)) => {
            client
                .get_json(&client.url(&format!("/api/v1/projects/{name}")))
                .await?
        }
        (Kind::Functions, None) => client.get_json(&client.project_url("/functions")).await?,
        (Kind::Functions, Some(name)) => {
            client
                .get_json(&client.project_url(&format!("/functions/{name}/versions")))
                .await?
        }
        (Kind::Workflows, None) => client.get_json(&client.project_url("/workflows")).await?,
        (Kind::Workflows, Some(name)) => {
            client
                .get_json(&client.project_url(&format!("/workflows/{name}/versions")))
                .await?
        }
        (Kind::Triggers, None) => client.get_json(&client.project_url("/triggers")).await?,
        (Kind::Triggers, Some(name)) => {
            client
                .get_json(&client.project_url(&format!("/triggers/{name}")))
                .await?
        }
        (Kind::Tasks, None) => client.get_json(&client.project_url("/tasks")).await?,
        (Kind::Tasks, Some(name)) => {
            client
                .get_json(&client.project_url(&format!("/tasks/{name}")))
                .await?
        }
        (Kind::Runs, Some(id)) => {
            let run: Value = client
                .get_json(&client.project_url(&format!("/runs/{id}")))
                .await?;
            if args.output == Format::Table && run.pointer("/status/workflow").is_some() {
                // A workflow run: the run, then every node of it.
                output::print(&run, args.output, columns(args.kind))?;
                println!();
                return output::print(&run["status"]["workflow"]["nodes"], args.output, NODES);
            }
            run
        }
        (Kind::Runs, None) => {
            let mut query = vec![("limit".to_string(), args.limit.to_string())];
            for (key, value) in [
                ("function", &args.function),
                ("step_of", &args.step_of),
                ("state", &args.state),
                ("label", &args.label),
            ] {
                if let Some(value) = value {
                    query.push((key.to_string(), value.clone()));
                }
            }
            let request = client
                .request(reqwest::Method::GET, &client.project_url("/runs"))
                .query(&query);
            let page: Value = client.send_json(request).await?;
            page["items"].clone()
        }
        (Kind::Services, None) => client.get_json(&client.project_url("/services")).await?,
        (Kind::Services, Some(name)) => {
            client
                .get_json(&client.project_url(&format!("/services/{name}")))
                .await?
        }
        (Kind::Secrets, None) => client.get_json(&client.project_url("/secrets")).await?,
        (Kind::Secrets, Some(name)) => {
            client
                .get_json(&client.project_url(&format!("/secrets/{name}")))
                .await?
        }
        (Kind::Artifacts, None) => {
            let list: Value = client.get_json(&client.project_url("/artifacts")).await?;
            list["items"].clone()
        }
        (Kind::Artifacts, Some(name)) => {
            let list: Value = client
                .get_json(&client.project_url(&format!("/artifacts/{name}/versions")))
                .await?;
            list["items"].clone()
        }
    };
    output::print(&value, args.output, columns(args.kind))
}

pub async fn describe(client: &Client, args: DescribeArgs) -> Result<(), CliError> {
    let path = match args.kind {
        Kind::Projects => {
            return output::print(
                &client
                    .get_json(&client.url(&format!("/api/v1/projects/{}", args.name)))
                    .await?,
                args.output,
                columns(args.kind),
            )
        }
        Kind::Functions => format!("/functions/{}", args.name),
        Kind::Workflows => format!("/workflows/{}", args.name),
        Kind::Triggers => format!("/triggers/{}", args.name),
        Kind::Tasks => format!("/tasks/{}", args.name),
        Kind::Runs => format!("/runs/{}", args.name),
        Kind::Services => format!("/services/{}", args.name),
        Kind::Secrets => format!("/secrets/{}", args.name),
        Kind::Artifacts => artifact_path(&args.name),
    };
    let value: Value = client.get_json(&client.project_url(&path)).await?;
    let format = if args.output == Format::Table {
        Format::Yaml
    } else {
        args.output
    };
    output::print(&value, format, columns(args.kind))
}

/// The API path of an artifact (`NAME`: its newest version) or of one version (`NAME:VERSION`).
pub fn artifact_path(reference: &str) -> String {
    match runplane_domain::key::split_name_version(reference) {
        (name, Some(version)) => format!("/artifacts/{name}/versions/{version}"),
        (name, None) => format!("/artifacts/{name}"),
    }
}

/// The nodes of a workflow run.
const NODES: &[Column] = &[
    Column {
        header: "NODE",
        cell: |v| text(v, "/name"),
    },
    Column {
        header: "STATE",
        cell: |v| text(v, "/state"),
    },
    Column {
        header: "RUN",
        cell: |v| {
            let run = text(v, "/run_id");
            if run.is_empty() {
                text(v, "/reused_from")
            } else {
                run
            }
        },
    },
    Column {
        header: "MESSAGE",
        cell: |v| text(v, "/message"),
    },
];

fn columns(kind: Kind) -> &'static [Column] {
    match kind {
        Kind::Projects => &[
            Column {
                header: "NAME",
                cell: |v| text(v, "/name"),
            },
            Column {
                header: "CREATED",
                cell: |v| time(v, "/created"),
            },
        ],
        Kind::Functions => &[
            Column {
                header: "NAME",
                cell: |v| text(v, "/metadata/name"),
            },
            Column {
                header: "KIND",
                cell: |v| text(v, "/kind"),
            },
            Column {
                header: "VERSION",
                cell: |v| text(v, "/metadata/version"),
            },
            Column {
                header: "IMAGE",
                cell: |v| text(v, "/spec/image"),
            },
            Column {
                header: "BUILT FROM",
                cell: |v| text(v, "/spec/built_from/version"),
            },
            Column {
                header: "CREATED",
                cell: |v| time(v, "/metadata/created"),
            },
        ],
        Kind::Triggers => &[
            Column {
                header: "NAME",
                cell: |v| text(v, "/metadata/name"),
            },
            Column {
                header: "KIND",
                cell: |v| text(v, "/kind"),
            },
            Column {
                header: "SCHEDULE/KEY",
                cell: |v| {
                    let schedule = text(v, "/spec/schedule");
                    if schedule.is_empty() {
                        text(v, "/spec/key")
                    } else {
                        schedule
                    }
                },
            },
            Column {
                header: "PAUSED",
                cell: |v| text(v, "/status/paused"),
            },
            Column {
                header: "NEXT FIRE",
                cell: |v| time(v, "/status/next_fire"),
            },
            Column {
                header: "LAST FIRE",
                cell: |v| time(v, "/status/last_fire"),
            },
            Column {
                header: "FIRES",
                cell: |v| {
                    format!(
                        "{} ({} failed)",
                        text(v, "/status/fires"),
                        text(v, "/status/failed_fires")
                    )
                },
            },
        ],
        Kind::Workflows => &[
            Column {
                header: "NAME",
                cell: |v| text(v, "/metadata/name"),
            },
            Column {
                header: "VERSION",
                cell: |v| text(v, "/metadata/version"),
            },
            Column {
                header: "STEPS",
                cell: |v| {
                    v.pointer("/spec/steps")
                        .and_then(Value::as_array)
                        .map_or_else(String::new, |steps| steps.len().to_string())
                },
            },
            Column {
                header: "CREATED",
                cell: |v| time(v, "/metadata/created"),
            },
        ],
        Kind::Tasks => &[
            Column {
                header: "NAME",
                cell: |v| text(v, "/metadata/name"),
            },
            Column {
                header: "KIND",
                cell: |v| text(v, "/kind"),
            },
            Column {
                header: "FUNCTION",
                cell: |v| text(v, "/spec/function"),
            },
            Column {
                header: "FRAMEWORK",
                cell: |v| text(v, "/spec/framework"),
            },
            Column {
                header: "MAX CONCURRENCY",
                cell: |v| text(v, "/spec/max_concurrency"),
            },
        ],
        Kind::Artifacts => &[
            Column {
                header: "NAME",
                cell: |v| text(v, "/metadata/name"),
            },
            Column {
                header: "VERSION",
                cell: |v| text(v, "/metadata/version"),
            },
            Column {
                header: "TYPE",
                cell: |v| text(v, "/spec/type"),
            },
            Column {
                header: "FILES",
                cell: |v| text(v, "/spec/files"),
            },
            Column {
                header: "SIZE",
                cell: |v| text(v, "/spec/size"),
            },
            Column {
                header: "PRODUCED BY",
                cell: |v| text(v, "/status/produced_by"),
            },
            Column {
                header: "CREATED",
                cell: |v| time(v, "/metadata/created"),
            },
        ],
        Kind::Secrets => &[
            Column {
                header: "NAME",
                cell: |v| text(v, "/name"),
            },
            Column {
                header: "CREATED",
                cell: |v| time(v, "/created"),
            },
            Column {
                header: "UPDATED",
                cell: |v| time(v, "/updated"),
            },
        ],
        Kind::Services => &[
            Column {
                header: "NAME",
                cell: |v| text(v, "/name"),
            },
            Column {
                header: "URL",
                cell: |v| text(v, "/url"),
            },
            Column {
                header: "RUN",
                cell: |v| text(v, "/run_id"),
            },
            Column {
                header: "VERSION",
                cell: |v| text(v, "/function_version"),
            },
            Column {
                header: "STATE",
                cell: |v| text(v, "/state"),
            },
            Column {
                header: "READY",
                cell: |v| format!("{}/{}", text(v, "/ready"), text(v, "/desired")),
            },
            Column {
                header: "RESTARTS",
                cell: |v| text(v, "/restarts"),
            },
        ],
        _ => &[
            Column {
                header: "ID",
                cell: |v| text(v, "/metadata/id"),
            },
            Column {
                header: "KIND",
                cell: |v| text(v, "/kind"),
            },
            Column {
                header: "FUNCTION",
                cell: |v| {
                    format!(
                        "{}:{}",
                        text(v, "/spec/function_name"),
                        text(v, "/spec/function_version")
                    )
                },
            },
            Column {
                header: "STATE",
                cell: |v| text(v, "/status/state"),
            },
            Column {
                header: "REASON",
                cell: |v| text(v, "/status/reason"),
            },
            Column {
                header: "ATTEMPT",
                cell: |v| text(v, "/status/attempt"),
            },
            Column {
                header: "CREATED",
                cell: |v| time(v, "/metadata/created"),
            },
            Column {
                header: "DURATION",
                cell: run_duration,
            },
        ],
    }
}

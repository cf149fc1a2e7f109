//! One module per group of CLI commands.

pub mod apply;
pub mod create;
pub mod download;
pub mod get;
pub mod invoke;
pub mod logs;
pub mod quickstart;
pub mod run;
pub mod server;
pub mod simple;
pub mod watch;

use crate::client::Client;
use crate::{Cli, Command};

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let client = || Client::new(&cli.url, &cli.project);
    match cli.command {
        Command::Server(args) => server::run(*args).await,
        Command::Quickstart(args) => quickstart::run(args, &cli.url, &cli.project).await,
        Command::Apply(args) => Ok(apply::run(&client()?, args).await?),
        Command::Create(command) => Ok(create::run(&client()?, command).await?),
        Command::Get(args) => Ok(get::get(&client()?, args).await?),
        Command::Describe(args) => Ok(get::describe(&client()?, args).await?),
        Command::Run(args) => Ok(run::run(&client()?, args).await?),
        Command::Invoke(args) => Ok(invoke::run(&client()?, args).await?),
        Command::Rerun(args) => Ok(run::rerun(&client()?, args).await?),
        Command::Logs(args) => Ok(logs::run(&client()?, args).await?),
        Command::Stop(args) => Ok(simple::stop(&client()?, args).await?),
        Command::Resume(args) => Ok(simple::resume(&client()?, args).await?),
        Command::Pause(args) => Ok(simple::pause(&client()?, args).await?),
        Command::Download(args) => Ok(download::run(&client()?, args).await?),
        Command::Delete(args) => Ok(simple::delete(&client()?, args).await?),
        Command::Supervise { .. } => Ok(()),
    }
}

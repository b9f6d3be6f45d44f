//! The `herald` binary: parse the command line, start telemetry, run.

use anyhow::Context;
use clap::Parser;
use herald::config::{Cli, Command};
use herald::message::NodeId;
use herald::{app, client, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            if args.check_config {
                println!("{args:#?}");
                return Ok(());
            }
            let node = NodeId::random();
            let telemetry = telemetry::init(&args.telemetry, node)?;
            let listeners = app::Listeners::bind(&args.listen).await?;
            let shutdown = shutdown::on_signal().context("installing signal handlers")?;
            let served = app::run(*args, listeners, node, shutdown).await;
            telemetry.shutdown();
            served?;
        }
        Command::Publish(args) => println!("{}", client::publish(args).await?),
        Command::Peers(args) => print!("{}", client::peers(args).await?),
        Command::Token(args) => println!("{}", client::token(args)?),
    }
    Ok(())
}

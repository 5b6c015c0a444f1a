//! `phyai`: generate Cosmos3 videos from the command line.

mod args;
mod bench;
mod generate;
mod progress;
mod serve;

use clap::Parser;

fn main() {
    let cli = args::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PHYAI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        args::Command::Generate(a) => generate::run(&a),
        args::Command::Bench(a) => bench::run(&a),
        args::Command::Serve(a) => serve::run(&a),
        args::Command::DemoCheckpoint { dir } => {
            phyai::models::cosmos3::demo::write_demo_checkpoint(&dir).map(|()| {
                eprintln!(
                    "wrote the demo checkpoint (tiny, RANDOM weights) to {}",
                    dir.display()
                )
            })
        }
    };
    if let Err(e) = result {
        // In a multi-process job the others must learn of it (and name this rank).
        if let Some(job) = phyai::parallel::job::Job::current() {
            job.fail(&e.to_string());
        }
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

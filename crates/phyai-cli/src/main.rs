//! `phyai`: generate Cosmos3 videos from the command line.

mod action;
mod args;
mod bench;
mod bench_cell;
mod bench_read;
mod generate;
mod progress;
mod serve;
mod transfer;

use clap::Parser;

fn main() {
    let cli = args::Cli::parse();
    // Library errors name request fields; this program shows its flags instead.
    phyai::error::set_field_names(flag_of);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PHYAI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    #[cfg(unix)]
    if matches!(cli.command, args::Command::Bench(_)) {
        // `phyai bench … | head`: a closed pipe ends the measurements quietly, as other
        // tools do, instead of a panic on the next line printed. (Not for generate and
        // serve, whose processes and sockets report a closed peer as an error.)
        // SAFETY: restores the default action of one signal before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        args::Command::Generate(a) => generate::run(&a),
        args::Command::Bench(a) => bench::run(&a),
        args::Command::MakeCheckpoint(a) => bench::make_checkpoint(&a),
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

/// The flag that sets a library field (`num_frames` → `--num-frames`); combined fields
/// (`tp/sp`) map part by part. Names that are no flag of ours stay as they are.
fn flag_of(field: &str) -> Option<String> {
    const FLAGS: &[&str] = &[
        "checkpoint",
        "prompt",
        "negative_prompt",
        "image",
        "video",
        "condition_frames",
        "condition_video_keep",
        "extend",
        "sound",
        "num_frames",
        "height",
        "width",
        "fps",
        "steps",
        "guidance_scale",
        "guidance_interval",
        "seed",
        "tp",
        "cfg",
        "sp",
        "device",
        "dtype",
        "init_noise",
        "out",
        "dump_dir",
        "vae_decode",
        "action_mode",
        "domain",
        "action_chunk",
        "resolution_tier",
        "view_point",
        "actions",
        "chunk_frames",
        "conditional_frames",
        "control_guidance",
        "control_guidance_interval",
        "quantize",
        "fp8_attention",
    ];
    /// Fields whose flag has another name.
    const RENAMED: &[(&str, &str)] = &[("controls", "control"), ("chunk_noise", "init_noise")];
    let parts: Vec<&str> = field
        .split('/')
        .map(|p| {
            RENAMED
                .iter()
                .find(|(f, _)| *f == p)
                .map_or(p, |(_, flag)| flag)
        })
        .collect();
    if !parts
        .iter()
        .all(|p| FLAGS.contains(p) || RENAMED.iter().any(|(_, flag)| flag == p))
    {
        return None;
    }
    Some(
        parts
            .iter()
            .map(|p| format!("--{}", p.replace('_', "-")))
            .collect::<Vec<_>>()
            .join("/"),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn library_fields_become_flags() {
        assert_eq!(
            super::flag_of("num_frames").as_deref(),
            Some("--num-frames")
        );
        assert_eq!(super::flag_of("tp/sp").as_deref(), Some("--tp/--sp"));
        assert_eq!(super::flag_of("controls").as_deref(), Some("--control"));
        assert_eq!(
            super::flag_of("chunk_noise").as_deref(),
            Some("--init-noise")
        );
        assert_eq!(
            super::flag_of("control_guidance_interval").as_deref(),
            Some("--control-guidance-interval")
        );
        assert_eq!(super::flag_of("token ids"), None);
        phyai::error::set_field_names(super::flag_of);
        let e = phyai::Error::invalid("tp/sp", "x").on_rank(1);
        assert_eq!(e.to_string(), "rank 1 failed: --tp/--sp: x");
        let e = phyai::Error::invalid("token ids", "x");
        assert_eq!(e.to_string(), "token ids: x");
    }
}

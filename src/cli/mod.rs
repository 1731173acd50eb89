//! The command line: parse, resolve settings once, call the library, print,
//! map errors to exit codes (0 ok, 1 a cell or check failed, 2 could not run).

mod datasets;
mod doctor;
mod eval;
mod export;
mod image;
mod merge;
mod progress;
mod report;
mod results;
mod run;
mod sandbox;
mod serve;
mod table;
mod validate;

use clap::{Parser, Subcommand};

/// Exit status when everything worked.
pub const EXIT_OK: i32 = 0;
/// A cell did not succeed, or a check failed.
pub const EXIT_FAILED: i32 = 1;
/// Bad usage or a set-up error: nothing ran.
pub const EXIT_ERROR: i32 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "csv-agent",
    version,
    about = "Verified training data for data-analysis agents, generated in a native Linux jail"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The main job: datasets → questions → verified episodes (resumable;
    /// rerun the same command to continue).
    Run(run::RunArgs),
    /// Make the questions files (with ground truth) without running a teacher.
    Questions(run::QuestionsArgs),
    /// One LLM triangulation of one question on one CSV, printed readably
    /// (exit 0 verified, 1 not verified).
    Validate(validate::ValidateArgs),
    /// What a run has done, what failed and why.
    Status(results::StatusArgs),
    /// Look at episodes, questions, or one trace.
    Inspect(results::InspectArgs),
    /// Write DIR/report.html: charts of a run and an episode browser, one
    /// static file.
    Report(report::ReportArgs),
    /// Join the shards of one run into one output (refuses shards of
    /// different runs); `--check` lists missing or unfinished shards.
    Merge(merge::MergeArgs),
    /// Turn episodes into training data: sft, sft-tools, sft-interleaved,
    /// prm, orm, dpo, kto or rl (JSON Lines for TRL or OpenAI).
    Export(export::ExportArgs),
    /// Divide episodes into train / val / test files, grouped and
    /// stratified by difficulty, the same for the same seed.
    Split(export::SplitArgs),
    /// Evaluate a model as a student on held-out episodes: accuracy
    /// against the verified answers, overall, per difficulty and template
    /// (exit 0 done, 1 stopped by a model failure, 2 bad input).
    Eval(eval::EvalArgs),
    /// Show each isolation layer as measured inside a real jail.
    Doctor(doctor::DoctorArgs),
    /// The dataset registry: list, show, add.
    Datasets(datasets::DatasetsArgs),
    /// Run code in a jailed worker.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
    /// Build or locate the Python image the jail runs.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Keep warm jails as a service: sessions (one fresh worker each) and
    /// scoring over HTTP on a unix socket (docs/serve.md).
    Serve(serve::ServeArgs),
}

/// Entry point of the binary. The jail-init mode is checked first, before
/// any thread exists: that process must stay single-threaded until it execs.
pub fn main() -> i32 {
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(crate::sandbox::init::INIT_ARG))
    {
        return crate::sandbox::init::main();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_ERROR } else { EXIT_OK };
            let _ = e.print();
            return code;
        }
    };
    // The jail's events on stderr (CSV_AGENT_LOG); `run` adds the log files.
    {
        use tracing_subscriber::prelude::*;
        let _ = tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(crate::logs::StderrLogs::from_env()),
        );
    }
    raise_open_files_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("csv-agent: error: cannot start the async runtime: {e}");
            return EXIT_ERROR;
        }
    };
    let result = runtime.block_on(async move {
        // The server drains on SIGTERM itself; it is not raced against the signal.
        let cli = match cli.command {
            Command::Serve(args) => return serve::run(args).await,
            command => Cli { command },
        };
        let work = async move {
            match cli.command {
                Command::Run(args) => run::run(args).await,
                Command::Questions(args) => run::questions(args).await,
                Command::Validate(args) => validate::run(args).await,
                Command::Status(args) => results::status(args),
                Command::Inspect(args) => results::inspect(args),
                Command::Report(args) => report::run(args),
                Command::Merge(args) => merge::run(args),
                Command::Export(args) => export::export(args),
                Command::Split(args) => export::split(args),
                Command::Eval(args) => eval::run(args).await,
                Command::Doctor(args) => doctor::run(args).await,
                Command::Datasets(args) => datasets::run(args).await,
                Command::Sandbox(cmd) => sandbox::run(cmd).await,
                Command::Image(cmd) => image::run(cmd).await,
                Command::Serve(args) => serve::run(args).await,
            }
        };
        // Ctrl-C or SIGTERM: drop the command's future, which drops its
        // sandboxes (killing their jails and removing their cgroups), then
        // exit the way a signalled process does.
        tokio::select! {
            result = work => result,
            signal = crate::serve::server::terminated() => {
                eprintln!("csv-agent: interrupted by {signal}; jails stopped");
                Ok(128 + if signal == "SIGTERM" { 15 } else { 2 })
            }
        }
    });
    // Do not wait long for stray blocking tasks; the cgroup clean-up of
    // sandboxes dropped on the way out runs on threads of its own, which the
    // process must outlive or their groups stay behind.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    if !crate::sandbox::wait_for_cleanup(std::time::Duration::from_secs(10)) {
        eprintln!("csv-agent: warning: cgroup clean-up did not finish; the next start removes what is left");
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("csv-agent: error: {e:#}");
            EXIT_ERROR
        }
    }
}

/// The supervisor holds about one descriptor per live worker and one per
/// model connection: hundreds of traces in flight pass the usual soft limit
/// of 1024. Raise the soft limit to the hard one (no privilege needed); the
/// jail init sets its own limit for everything inside.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

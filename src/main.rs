//! The `csv-agent` binary: parse the command line and hand over to the library.

fn main() {
    std::process::exit(csv_agent::cli::main());
}
